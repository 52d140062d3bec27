"""The Keras callback that records gradient health as TensorBoard summaries.

How it stays cheap: the statistics come
from the gradients that Keras already computed, by wrapping the model's
``train_step`` and the ``apply`` of every optimizer of the model (its
``optimizer`` and those it holds, a GAN's) on the instances (the user changes
nothing). The compiled step reduces them to per-variable and per-slice sums
(``stats.py``) and writes one small row per step into a ring on the device
(``ring.py``); a running gradient sum per variable gives the window variance.
Every block of up to 64 steps a writer thread at idle priority reads the new
rows, finishes and writes the statistics (``reducer.py``) and runs the live
diagnosis, rate-limited. No value is read back to Python per step, and the
callback defines no batch hooks (Keras would then convert every batch's logs
to numpy).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import logging
import os
import struct
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tb_gradplugin import diagnosis, metadata, reducer, ring, stats

logger = logging.getLogger(__name__)

_FLUSH_SECS = 10.0  # s between host flushes; TensorBoard reloads every 5 s.
_MAX_QUEUE = 10_000  # events held before the writer flushes by itself.
_MAX_WRITE_DELAY_S = 2.0  # s a recorded step may wait for its block (slow steps).
_LIVE_INTERVAL_S = 5.0  # s between live diagnoses, however short the epochs.


def _is_mean_metric(metric: Any) -> bool:
    return isinstance(getattr(metric, "total", None), keras.Variable) and isinstance(
        getattr(metric, "count", None), keras.Variable
    )


def _all_metrics(model: keras.Model) -> list:
    found, stack = [], list(model.metrics)
    while stack:
        m = stack.pop(0)
        found.append(m)
        stack.extend(getattr(m, "metrics", []) or [])
    return found


def _candidate_variables(model: keras.Model) -> list:
    """Every variable created trainable, frozen or not, in a fixed order.

    A layer's ``_trainable_variables`` keeps the variables created trainable
    whatever ``layer.trainable`` says later, so the per-layer rows keep one
    order and one set of labels across freezing, unfreezing and recompiling.
    """
    seen, found = set(), []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for v in getattr(layer, "_trainable_variables", None) or []:
            if id(v) not in seen:
                seen.add(id(v))
                found.append(v)
    return found


def _optimizers(model: keras.Model) -> dict[str, Any]:
    """``model.optimizer`` and every other optimizer held by the model (a GAN's).

    Returns:
        ``{attribute name: optimizer}``, ``"optimizer"`` first.
    """
    found = {"optimizer": model.optimizer}
    for name, value in vars(model).items():
        if isinstance(value, keras.optimizers.Optimizer) and all(
            value is not o for o in found.values()
        ):
            found[name.lstrip("_")] = value
    return found


_PARSED_RECORDS = 1000  # records of a file parsed whole while looking for labels


def _record_step(data: bytes) -> int | None:
    """The step of a serialized ``Event`` that starts ``wall_time, step``."""
    if len(data) < 10 or data[0] != 0x09 or data[9] != 0x10:
        return None
    step, shift = 0, 0
    for byte in data[10:20]:
        step |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return step
    return None


def _run_state(log_dir: str) -> tuple[int, list[str] | None]:
    """What the events already in ``log_dir`` hold.

    Reads record headers and each event's first bytes (its step), parsing
    whole events only at the start of a file: a long run's files cost a
    sequential read, not a parse of every event.

    Returns:
        ``(last, paths)``: the largest step (``0``: none) and the variable
        paths of the first ``layer/*`` tag metadata (``None``: none), the
        labels TensorBoard keeps for the run.
    """
    from tensorboard.compat.proto import event_pb2

    last, paths = 0, None
    tag = metadata.layer_tag("grad_norm")
    for name in sorted(_event_files(log_dir)):
        with open(os.path.join(log_dir, name), "rb") as f:
            for count in itertools.count():
                header = f.read(12)
                if len(header) < 12:
                    break
                (length,) = struct.unpack("<Q", header[:8])
                data = f.read(length + 4)[:length]
                if len(data) < length:
                    break  # a record being written
                step = _record_step(data)
                if paths is None and count < _PARSED_RECORDS or step is None:
                    try:
                        event = event_pb2.Event.FromString(data)
                    except Exception:  # noqa: BLE001 - a damaged record is skipped
                        continue
                    if not event.HasField("summary"):
                        continue
                    step = int(event.step)
                    for value in event.summary.value if paths is None else ():
                        content = value.metadata.plugin_data.content
                        if value.tag == tag and content:
                            paths = metadata.parse_plugin_content(content).get(
                                "variables"
                            )
                last = max(last, step)
    return last, paths


def _event_files(log_dir: str) -> list[str]:
    try:
        return [f for f in os.listdir(log_dir) if ".tfevents." in f]
    except OSError:
        return []


def _idle_priority() -> None:
    """Lets the writer thread run only on CPU time the training leaves idle.

    Measured on the 2-core dev machine with a synthetic 12 % CPU load beside a
    1 ms-step fit: +10-11 % wall time at normal priority, +7 % at SCHED_IDLE.
    The reduction is numpy on this thread, so the priority applies to it.
    """
    # Not Linux, or not permitted: the thread runs at normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


class _ProbeCapture:
    """Keeps the first training batch in variables, as the curvature probe.

    The callback never sees the data that ``fit`` gets; the train step does.
    The copy is made once, in the graph, on the first step.
    """

    def __init__(self):
        self.vars = None
        self.structure = None
        self.captured = None

    def capture(self, data) -> None:
        flat = tf.nest.flatten(data)
        if self.vars is None:
            if not all(t.shape.is_fully_defined() for t in flat):
                return
            with tf.init_scope():
                self.vars = [
                    tf.Variable(tf.zeros(t.shape, t.dtype), trainable=False)
                    for t in flat
                ]
                self.captured = tf.Variable(False, trainable=False)
            self.structure = data
        if len(flat) != len(self.vars) or any(
            t.shape != v.shape for t, v in zip(flat, self.vars, strict=True)
        ):
            return

        def store():
            for v, t in zip(self.vars, flat, strict=True):
                v.assign(t)
            self.captured.assign(True)
            return tf.constant(True)

        tf.cond(self.captured, lambda: tf.constant(False), store)

    def batch(self):
        """Returns ``(x, y, sample_weight)`` of the captured batch, or ``None``."""
        if self.vars is None or not bool(self.captured.numpy()):
            return None
        data = tf.nest.pack_sequence_as(self.structure, [v.numpy() for v in self.vars])
        return keras.utils.unpack_x_y_sample_weight(data)


class _Monitor:
    """Per model: the shims that reduce each step to a ring row, and the host side.

    The host side hands blocks of ring rows to a writer thread, which finishes
    the statistics, writes them and runs the live diagnosis beside the
    training.
    """

    def __init__(self, callback: GradientHealthCallback, model: keras.Model):
        self.cb = callback
        self.model = model
        self.optimizer = model.optimizer
        self.strategy = model.distribute_strategy
        self.is_lso = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        factor = getattr(self.optimizer, "loss_scale_factor", None)
        self.unscale = self.is_lso or bool(factor)
        found = _all_metrics(model)
        tracker = getattr(model, "_loss_tracker", None)
        # Every Mean of the model, those named "loss" last (the compiled
        # tracker first of them): candidates for the loss Keras logs.
        means = [m for m in found if _is_mean_metric(m)]
        self.loss_metrics = [m for m in means if m.name != "loss"] + sorted(
            (m for m in means if m.name == "loss"), key=lambda m: m is not tracker
        )
        metrics = {m.name: m for m in found}
        self.step_components = [
            n for n in callback.loss_components if _is_mean_metric(metrics.get(n))
        ]
        self.component_metrics = [metrics[n] for n in self.step_components]
        self.epoch_components = [
            n for n in callback.loss_components if n not in self.step_components
        ]
        self.steps_per_execution = max(
            int(getattr(model, "steps_per_execution", 1) or 1), 1
        )
        self.jit = bool(getattr(model, "jit_compile", False))
        self.layout = None
        self.ring = None
        self.reducer = None
        self.writer = None
        self.sparse_paths: set[str] = set()
        self.optimizers = _optimizers(model)
        # The paths each optimizer updates, as traced: which gradients the
        # global norms cover, for the tags' content.
        self.optimizer_paths: dict[str, list[str]] = {}
        self.late_components = False
        self.step_offset: int | None = None
        self.run_last_step = 0
        if model.trainable_variables:
            self._setup(_candidate_variables(model))
        self.probe = None
        if callback.hessian_freq and callback.probe_data is None:
            if self.strategy.num_replicas_in_sync > 1:
                warnings.warn(
                    "GradientHealthCallback: under a distribution strategy pass "
                    "probe_data=(x, y) for the curvature; hessian_freq is ignored.",
                    stacklevel=3,
                )
            else:
                self.probe = _ProbeCapture()
        self.executions_since_submit = 0
        self.last_submit = time.monotonic()
        self.rows_taken = 0
        self.executions = 0
        self.timed_from = None
        self.executor = None
        self.futures: collections.deque = collections.deque()
        self.trace_warned = False
        self.branch_warned = False
        self.active = False
        self._read_fn = None
        self._epoch_fn = None
        # The state of the step being traced, per thread: under a
        # MirroredStrategy each replica's step is traced in its own thread,
        # and they take turns at every collective.
        self._local = threading.local()
        self._local.reduced = None
        self.reused_all_reduce = False

    def _setup(self, variables):
        """Lays out the variables; creates the ring and the running sums.

        A subclassed model may be built only by its first train step (Keras
        defers the build without a distribution strategy); then this runs while
        that step is traced, lifted out of the graph.
        """
        self.variables = variables
        self.var_ids = {id(v): i for i, v in enumerate(variables)}
        self.layout = stats.Layout(
            [v.path for v in variables], [v.shape for v in variables], self.cb.slices
        )
        self.packing = ring.row_packing(
            self.layout.num_variables,
            len(self.layout.slices),
            len(self.step_components),
        )
        block, rows = ring.ring_rows(self.steps_per_execution)
        self.executions_per_block = block // self.steps_per_execution
        self.ring = ring.StepRing(self.packing.width, rows, self.strategy)
        with self.strategy.scope():
            # The gradient summed over the open variance window: one float32
            # slot per parameter, like one optimizer moment.
            self.running = [
                tf.Variable(
                    tf.zeros(v.shape, tf.float32),
                    trainable=False,
                    synchronization=tf.VariableSynchronization.ON_WRITE,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                )
                for v in variables
            ]
        self.reducer = reducer.BlockReducer(
            self.layout,
            self.packing,
            self.step_components,
            self.cb.update_freq,
            self.cb.variance_window,
            self.is_lso,
        )
        self.reducer.run_last_step = self.run_last_step

    # -- in-graph shims ----------------------------------------------------
    def install(self):
        """Wraps train_step, optimizer.apply and the train function.

        Forces a rebuild of the train function so that the compiled step
        includes the shims (a traced function keeps what it saw).
        """
        model, opt = self.model, self.optimizer
        if self.is_lso and not opt.built and model.trainable_variables:
            # The shim reads optimizer state (the loss scale) before the first
            # apply, which is where Keras would build it.
            with self.strategy.scope():
                opt.build(model.trainable_variables)
        orig_step = getattr(model.train_step, "_original", model.train_step)

        def train_step(data):
            return self._train_step(orig_step, data)

        train_step._original = orig_step
        model.train_step = train_step
        for name, each in self.optimizers.items():
            self._wrap_apply(name, each)
        if self._reads_keras_all_reduce():
            orig_reduce = opt._all_reduce_sum_gradients
            orig_reduce = getattr(orig_reduce, "_original", orig_reduce)

            def all_reduce(grads_and_vars):
                reduced = orig_reduce(grads_and_vars)
                self._local.reduced = reduced
                return reduced

            all_reduce._original = orig_reduce
            opt._all_reduce_sum_gradients = all_reduce
        model.make_train_function(force=True)
        orig_fn = model.train_function

        def train_function(iterator):
            logs = orig_fn(iterator)
            self.after_execution()
            return logs

        train_function._gradient_health_monitor = self
        model.train_function = train_function

    def _wrap_apply(self, name, opt):
        orig_apply = getattr(opt.apply, "_original", opt.apply)

        def apply(grads, trainable_variables=None):
            return self._apply(name, opt, orig_apply, grads, trainable_variables)

        apply._original = orig_apply
        opt.apply = apply

    def _reads_keras_all_reduce(self) -> bool:
        """Whether the statistics can use the gradients Keras all-reduces.

        Under a distribution strategy Keras's TensorFlow optimizer sums the
        replicas' gradients in ``_all_reduce_sum_gradients``, in the replica
        context of the step, before the update; reading them there saves a
        second all-reduce of the whole gradient. Not where the update runs in
        a conditional branch (loss scaling, gradient accumulation) or on
        transformed gradients (clipping, a loss scale factor): there the
        statistics all-reduce the gradients themselves.
        """
        opt = self.optimizer
        return (
            self.strategy.num_replicas_in_sync > 1
            and hasattr(opt, "_all_reduce_sum_gradients")
            and not self.unscale
            and not getattr(opt, "gradient_accumulation_steps", None)
            and not any(
                getattr(opt, name, None)
                for name in ("clipnorm", "clipvalue", "global_clipnorm")
            )
        )

    def _train_step(self, orig_step, data):
        if self.probe is not None:
            self.probe.capture(data)
        self._local.collected = {}
        self._local.pending = None
        before = self._metric_state()
        self._local.in_step = True
        self._local.graph = tf.compat.v1.get_default_graph()
        try:
            logs = orig_step(data)
        finally:
            self._local.in_step = False
        after = self._metric_state()
        pending, collected = self._local.pending, self._local.collected
        self._local.pending, self._local.collected = None, {}
        if pending is None:
            if not self.trace_warned:
                self.trace_warned = True
                warnings.warn(
                    "GradientHealthCallback: the train step did not call "
                    "optimizer.apply/apply_gradients; no gradient statistics are "
                    "recorded.",
                    stacklevel=2,
                )
            return logs
        x = tf.nest.flatten(data)[0]
        batch_size = tf.cast(tf.shape(x)[0], tf.float32)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            batch_size = ctx.all_reduce(tf.distribute.ReduceOp.SUM, batch_size)
            # Metric variables sync on read: each replica sees its own sums.
            deltas = ctx.all_reduce(
                tf.distribute.ReduceOp.SUM,
                [
                    tf.stack([t1 - t0, c1 - c0])
                    for (t0, c0), (t1, c1) in zip(before, after, strict=True)
                ],
            )
            before = [(tf.constant(0.0), tf.constant(0.0))] * len(deltas)
            after = [(d[0], d[1]) for d in deltas]
        means = [
            tf.cast(tf.math.divide_no_nan(t1 - t0, c1 - c0), tf.float32)
            for (t0, c0), (t1, c1) in zip(before, after, strict=True)
        ]
        counted = [
            tf.cast(c1 > c0, tf.float32)
            for (_, c0), (_, c1) in zip(before, after, strict=True)
        ]
        if not self.late_components:
            # Keras creates some Mean trackers (a multi-output model's
            # per-output losses) in the first step: after it, the callback
            # lays the step out again with them as per-step components.
            now = {m.name: m for m in _all_metrics(self.model)}
            self.late_components = any(
                _is_mean_metric(now.get(n)) for n in self.epoch_components
            )
        n_loss = len(self.loss_metrics)
        loss, known = self._step_loss(
            logs, after[:n_loss], means[:n_loss], counted[:n_loss], ctx
        )
        components = means[n_loss:]
        parts, nonfinite = self._step_parts(collected)
        closed, running = self._window_close(pending["skipped"], pending["step"])
        pending.update(parts=parts, nonfinite=nonfinite, closed=closed)
        pending["running"] = running
        self._record(pending, loss, known, components, batch_size)
        return logs

    def _step_loss(self, logs, after, means, counted, ctx):
        """The step's value of what Keras logs as ``loss``, and whether known.

        ``logs["loss"]`` is either a Mean metric's running result (the
        compiled tracker, a custom step's ``total_loss`` tracker): then the
        step's value is that metric's mean over this step, known when the
        step updated it; or a plain tensor, the step's loss itself. No
        ``loss`` in the logs, or one from a metric this step left unchanged:
        unknown, a NaN marked so, never a filled-in 0.
        """
        nan, zero = tf.constant(float("nan")), tf.constant(0.0)
        value = logs.get("loss") if isinstance(logs, Mapping) else None
        if value is None or not tf.is_tensor(value) or value.shape.rank != 0:
            return nan, zero
        value = tf.cast(value, tf.float32)
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            # Replica-local results do not match the synced logs: follow
            # the metrics named "loss" that the step updated.
            loss, known = nan, zero
            for m, mean, seen in zip(self.loss_metrics, means, counted, strict=True):
                if m.name == "loss":
                    loss = tf.where(seen > 0, mean, loss)
                    known = tf.maximum(known, seen)
            return loss, known
        loss, known = value, tf.constant(1.0)
        for (total, count), mean, seen in zip(after, means, counted, strict=True):
            result = tf.cast(
                tf.math.divide_no_nan(total, tf.cast(count, total.dtype)), tf.float32
            )
            hit = tf.equal(result, value)
            loss = tf.where(hit, mean, loss)
            known = tf.where(hit, seen, known)
        return tf.where(known > 0, loss, nan), known

    def _metric_state(self):
        metrics = list(self.loss_metrics) + list(self.component_metrics)
        return [
            (tf.identity(m.total.value), tf.identity(m.count.value)) for m in metrics
        ]

    def _apply(self, name, opt, orig_apply, grads, trainable_variables):
        """Runs one optimizer's update and reduces its variables' gradients.

        Several optimizers may update parts of the model in one step (a GAN);
        each call adds the sums of the variables it updated. A variable that
        no optimizer updated at a step is absent (NaN) from that step's row.
        """
        if not getattr(self._local, "in_step", False):
            # An update outside the train step (the user's own loop): not a
            # step of this run.
            return orig_apply(grads, trainable_variables)
        if tf.compat.v1.get_default_graph() is not self._local.graph:
            # Inside a conditional branch of the step (a tf.cond that updates
            # some steps only): its tensors cannot leave the branch, so these
            # variables are absent from the rows rather than breaking the step.
            if not self.branch_warned:
                self.branch_warned = True
                warnings.warn(
                    f"GradientHealthCallback: {name} updates inside a conditional "
                    "branch of the train step; its variables are not recorded.",
                    stacklevel=2,
                )
            return orig_apply(grads, trainable_variables)
        variables = (
            list(trainable_variables)
            if trainable_variables is not None
            else list(opt._trainable_variables)
        )
        grads = list(grads)
        if self.layout is None or not opt.built:
            with tf.init_scope():
                if self.layout is None:
                    known = _candidate_variables(self.model)
                    ids = {id(v) for v in known}
                    self._setup(known + [v for v in variables if id(v) not in ids])
                if not opt.built:
                    opt.build(variables)
        by_index = {}
        for g, v in zip(grads, variables, strict=False):
            i = self.var_ids.get(id(v))
            if i is not None and g is not None:
                by_index[i] = g
        primary = opt is self.optimizer
        is_lso = primary and self.is_lso
        ctx = tf.distribute.get_replica_context()
        reuse = primary and self._reads_keras_all_reduce()
        if ctx is not None and ctx.num_replicas_in_sync > 1 and not reuse:
            # Replica gradients are scaled by 1/replicas before the all-reduce;
            # the statistics are of the summed, global gradient.
            keys = sorted(by_index)
            summed = ctx.all_reduce(
                tf.distribute.ReduceOp.SUM,
                [tf.convert_to_tensor(by_index[i]) for i in keys],
            )
            by_index = dict(zip(keys, summed, strict=True))
        factor = getattr(opt, "loss_scale_factor", None)
        if is_lso:
            scale = tf.cast(opt.dynamic_scale, tf.float32)
        else:
            scale = tf.constant(float(factor or 1.0), tf.float32)
        unscale = is_lso or bool(factor)
        iteration = tf.cast(opt.iterations, tf.int64)
        lr = tf.cast(opt.learning_rate, tf.float32)
        updated = sorted(
            {self.var_ids[id(v)] for v in variables if id(v) in self.var_ids}
        )
        paths = self.optimizer_paths.setdefault(name, [])
        paths.extend(
            p for p in (self.layout.paths[i] for i in updated) if p not in paths
        )
        # The parameters before the update (a transient copy: the update
        # writes new buffers while these reads are alive).
        before = {i: tf.identity(self.variables[i].value) for i in updated}
        accumulate = getattr(opt, "gradient_accumulation_steps", None)
        if accumulate and not is_lso:
            # A step is an applied update: the batches that only add to the
            # accumulators are skipped rows, and the update's row holds the
            # gradient it applied, the mean over its batches.
            applies = tf.equal((opt._iterations + 1) % accumulate, 0)
            by_index = {
                i: (
                    tf.convert_to_tensor(g)
                    + opt._accumulated_gradients[
                        opt._get_variable_index(self.variables[i])
                    ].value
                )
                / accumulate
                for i, g in by_index.items()
            }
        self._local.reduced = None
        result = orig_apply(grads, trainable_variables)
        with tf.control_dependencies([result] if result is not None else []):
            after = {i: tf.identity(self.variables[i].value) for i in updated}
            iteration_after = tf.cast(opt.iterations, tf.int64)
        if reuse and self._local.reduced is not None:
            # The global gradients Keras summed for the update (by variable).
            where = {id(v.value): i for i, v in enumerate(self.variables)}
            by_index = {
                where[id(v)]: g
                for g, v in self._local.reduced
                if g is not None and id(v) in where
            }
            self.reused_all_reduce = True
        self._local.reduced = None
        skipped = tf.equal(iteration_after, iteration) if is_lso else tf.constant(False)
        if accumulate and not is_lso:
            skipped = tf.logical_not(applies)
        conditional = is_lso or bool(accumulate)
        self._collect(
            by_index, before, after, scale if unscale else None, skipped, conditional
        )
        if self._local.pending is None or primary:
            # The step, learning rate and loss scale of a row are those of
            # model.optimizer when it ran in the step, else of the first
            # optimizer that did.
            self._local.pending = {
                "lr": lr,
                "scale": scale,
                "skipped": skipped,
                "step": iteration_after,
            }
        return result

    def _collect(self, by_index, before, after, scale, skipped, conditional):
        """Reduces the gradients of one update to sums; adds to the running sums."""
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
            self._local.collected[i] = (sums, values)

    def _step_parts(self, collected):
        """The step's ``[V]`` sum vectors and ``[S]`` slice vectors, in row order.

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

    def _running_close(self):
        """Reduces the running sums (``stats.RUNNING_COLUMNS``, slices) and resets."""
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

    def _window_close(self, skipped, step):
        """In the step: closes a window of ``variance_window`` steps at its end."""
        width = 2 * self.layout.num_variables + len(self.layout.slices)
        if self.cb.variance_window == "epoch":
            return tf.constant(0.0), tf.zeros([width], tf.float32)
        close = tf.logical_and(
            tf.logical_not(skipped),
            tf.equal(step % int(self.cb.variance_window), 0),
        )
        running = tf.cond(
            close, self._running_close, lambda: tf.zeros([width], tf.float32)
        )
        return tf.cast(close, tf.float32), running

    def _record(self, pending, loss, known, components, batch_size):
        """Stacks the step's figures into one ring row and writes it."""
        skipped = pending["skipped"]
        scalars = [
            loss,
            known,
            pending["lr"],
            pending["scale"],
            tf.cast(skipped, tf.float32),
            batch_size,
            *components,
        ]
        row = tf.concat(
            [
                tf.stack(scalars),
                *pending["parts"],
                tf.reshape(pending["closed"], [1]),
                pending["running"],
                ring.step_words(pending["step"]),
            ],
            axis=0,
        )
        bad = None
        if self.cb.stop_on_nan:
            bad = tf.logical_and(known > 0, tf.logical_not(tf.math.is_finite(loss)))
            if self.is_lso:
                bad = tf.logical_and(bad, tf.logical_not(skipped))
            else:
                bad = tf.logical_or(bad, pending["nonfinite"] > 0)
        self.ring.record(row, bad)

    # -- host side (training thread) -----------------------------------------
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
            or time.monotonic() - self.last_submit > _MAX_WRITE_DELAY_S
        ):
            self.cb._guarded(self.submit)
        if self.cb.stop_on_nan and int(self.ring.nan_seen.numpy()):
            logger.warning("GradientHealthCallback: NaN/Inf seen; stopping training.")
            self.model.stop_training = True
        self.cb._guarded(self.poll)
        if self.cb._flags:
            self.cb._report_flags()

    def _step_seconds(self):
        if self.timed_from is None:
            return None
        start, executions = self.timed_from
        steps = (self.executions - executions) * self.steps_per_execution
        return (time.monotonic() - start) / steps if steps else None

    def submit(self, stop: int | None = None):
        """Has the rows recorded so far processed on the writer thread.

        Args:
            stop: The ring's row count, when already read. Defaults to
                ``None``: read it here.
        """
        self.executions_since_submit = 0
        self.last_submit = time.monotonic()
        # The ring holds the blocks in flight and more: wait rather than
        # let the step overwrite rows not yet read (a writer falling behind).
        while len(self.futures) >= ring.BLOCKS_IN_FLIGHT:
            self.futures.popleft().result()
        if stop is None:
            stop = int(self.ring.count.numpy())
        start, self.rows_taken = max(self.rows_taken, stop - self.ring.rows), stop
        if stop > start:
            self._submit(self._process, start, stop, self._step_seconds())

    def _submit(self, fn, *args):
        if self.executor is None:
            self.executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="gradient_health_writer",
                initializer=_idle_priority,
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
        """Hands the epoch's rows, its window and per-epoch components over."""
        if self._epoch_fn is None:
            # One call, one wait for the device: the ring's count, the step,
            # and the epoch window's running sums (reduced, then reset).
            self._epoch_fn = tf.function(self._epoch_state, autograph=False)
        count, step, running = self._epoch_fn()
        self.submit(int(count))
        running = (
            np.asarray(running, np.float64)
            if self.cb.variance_window == "epoch"
            else None
        )
        values = {n: float(logs[n]) for n in self.epoch_components if n in logs}
        self._submit(self._epoch_task, running, int(step), values)

    def _epoch_state(self):
        running = (
            self._running_close()
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
    def _process(self, start, stop, step_seconds):
        if self._read_fn is None:
            # A concrete function skips tf.function's per-call argument
            # binding (~1 ms of Python per call here, holding the GIL).
            spec = tf.TensorSpec([], tf.int64)
            self._read_fn = tf.function(
                self.ring.read, autograph=False
            ).get_concrete_function(spec, spec)
        if self.reducer.writer is not self.writer:
            self.reducer.set_writer(self.writer, self.tags)
        block = np.asarray(
            self._read_fn(tf.constant(start, tf.int64), tf.constant(stop, tf.int64))
        )
        self.reducer.add_rows(block, step_seconds)
        self.cb._after_write(urgent=self._take_anomalies())

    def _epoch_task(self, running, step, values):
        if self.reducer.writer is not self.writer:
            self.reducer.set_writer(self.writer, self.tags)
        # The step of the epoch's last row (the run's step, whichever
        # optimizer counted it), else the optimizer's step.
        step = self.reducer.last_step or step + (self.reducer.step_offset or 0)
        self.reducer.epoch_end(running)
        if values:
            with self.writer.as_default():
                for name, value in values.items():
                    tag = metadata.loss_component_tag(name)
                    tf.summary.write(
                        tag,
                        tf.constant(value, tf.float32),
                        step=step,
                        metadata=(self.reducer.tags or self.tags())[tag],
                    )
        self.cb._after_write(urgent=self._take_anomalies(), epoch_end=True)

    def _final_task(self):
        if self.reducer.writer is not self.writer:
            self.reducer.set_writer(self.writer, self.tags)
        self.reducer.release(final=True)
        self.cb._flush()
        # Rate-limited like any other: a fit of a few steps pays no diagnosis.
        self.cb._after_write(urgent=self._take_anomalies(), epoch_end=True)

    def _take_anomalies(self) -> bool:
        found = bool(self.reducer.anomalies)
        self.reducer.anomalies.clear()
        return found

    def set_writer(self, writer):
        """Sets the summary writer (the tags are made at the first write)."""
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
        return reducer.tag_metadata(
            self.layout,
            freq,
            self.cb.variance_window,
            self.cb.loss_components,
            self.step_components,
            [p for p in self.layout.paths if p in self.sparse_paths],
            # Named only when not all is model.optimizer's (a GAN's, a split).
            self.optimizer_paths if set(self.optimizer_paths) - {"optimizer"} else None,
        )


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
            content as ``update_freq``. Step 1 is always logged, and so is
            every step within 256 steps of an anomalous one (a first NaN/Inf,
            or a gradient-norm jump of 10x the recent median); the statistics
            see every step whatever this is (windows, NaN/Inf counts).
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
            live diagnosis off. The rules run on the writer thread, on the
            events written since their last run, at most every 5 s (at once
            after an anomalous step); with ``"stop"`` each epoch end waits for
            the steps handed over, so an anomaly stops training at that epoch's
            end. Defaults to ``"warn"``.
        probe_data: ``(x, y)`` or ``(x, y, sample_weight)`` of the fixed probe
            batch for the curvature. Defaults to ``None``: the first training
            batch of the first ``fit``, kept for the whole run.
        max_exact_params: Largest Hessian block computed exactly; bigger ones use
            stochastic Lanczos quadrature. Defaults to ``4096`` parameters.
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
        max_exact_params: int = 4096,
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
        self._live = None
        self._last_live = -float("inf")
        self._flags: list = []

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
            monitor = _Monitor(self, model)
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
        if self.on_flag == "stop":
            self._guarded(mon.drain)
        self._guarded(mon.poll)
        self._report_flags(epoch)

    def on_train_end(self, logs=None):
        """Writes what is left, flushes the writer and reports the last flags.

        The writer stays open for the next ``fit`` with this callback (one
        event file per run, and the writer functions need no new trace); call
        :meth:`close` to release it earlier.
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
        function records the components per step from the next step on.
        """
        old = self._monitor
        old.finish()
        old.active = False
        monitor = _Monitor(self, self.model)
        monitor.run_last_step = self._run_state()[0]
        if monitor.reducer is not None:
            monitor.reducer.run_last_step = monitor.run_last_step
        if old.probe is not None:
            monitor.probe = old.probe
        monitor.install()
        self._monitor = monitor
        monitor.set_writer(self._writer)
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
            return _run_state(self.log_dir)
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
        base = self._base_log_dir
        k = 2
        while True:
            folder = os.path.join(base, f"variables-{k}")
            sub_last, sub_paths = _run_state(folder)
            if sub_paths is None or list(sub_paths) == list(paths):
                break
            k += 1
        warnings.warn(
            f"GradientHealthCallback: the model's variables differ from those "
            f"recorded in {self.log_dir!r}; this fit is written to {folder!r} so "
            "that every per-layer value keeps its own label.",
            RuntimeWarning,
            stacklevel=3,
        )
        if self._writer is not None:
            self._guarded(self._writer.close)
            self._writer = None
        self.log_dir = folder
        self._run_paths = list(paths)
        self._live = None
        return max(last, sub_last)

    def _open_writer(self):
        if self._writer is None:
            existing = set(_event_files(self.log_dir))
            self._writer = tf.summary.create_file_writer(
                self.log_dir, max_queue=_MAX_QUEUE, flush_millis=int(_FLUSH_SECS * 1000)
            )
            self._writer.flush()
            new = sorted(set(_event_files(self.log_dir)) - existing)
            self._event_file = os.path.join(self.log_dir, new[-1]) if new else None
        if self._monitor.writer is not self._writer:
            self._monitor.set_writer(self._writer)

    def _after_write(self, urgent: bool, epoch_end: bool = False) -> None:
        """On the writer thread, after a task: flushes, runs the live diagnosis.

        The diagnosis runs at most every :data:`_LIVE_INTERVAL_S` seconds, or
        at once after an anomalous step; it reads only the events appended
        since its last run. Its flags are reported on the training thread.
        """
        now = time.monotonic()
        due = self.on_flag is not None and (
            urgent or (epoch_end and now - self._last_live >= _LIVE_INTERVAL_S)
        )
        if due or now - self._last_flush > _FLUSH_SECS:
            self._flush()
        if not due:
            return
        self._last_live = now
        from tb_gradplugin import live

        try:
            if self._live is None:
                self._live = live.LiveDiagnosis(self.log_dir)
            self._flags.extend(self._live.new_errors())
        except Exception as err:  # noqa: BLE001 - a diagnostic never ends training
            logger.warning("GradientHealthCallback: live diagnosis failed: %s", err)
            self.on_flag = None

    def _report_flags(self, epoch: int | None = None) -> None:
        """Warns of the flags the live diagnosis found; stops if asked to."""
        flags = []
        while self._flags:  # appended on the writer thread; pop is atomic
            flags.append(self._flags.pop(0))
        when = f"epoch {epoch + 1}" if epoch is not None else "end of training"
        for flag in flags:
            text = diagnosis.format_flag(flag)
            logger.warning("Gradient health, %s:\n%s", when, text)
            warnings.warn(
                f"GradientHealthCallback: {when}\n{text}",
                RuntimeWarning,
                stacklevel=2,
            )
        if flags and self.on_flag == "stop" and self.model is not None:
            logger.warning(
                "GradientHealthCallback: stopping training (on_flag='stop')."
            )
            self.model.stop_training = True

    def _probe_batch(self):
        if self.probe_data is not None:
            return keras.utils.unpack_x_y_sample_weight(tuple(self.probe_data))
        probe = self._monitor.probe
        return probe.batch() if probe is not None else None

    def _curvature(self):
        from tb_gradplugin import curvature

        batch = self._probe_batch()
        if batch is None:
            return
        x, y, sw = batch
        try:
            result = curvature.compute_curvature(
                self.model, x, y, sw, max_exact_params=self.max_exact_params
            )
        except (ValueError, tf.errors.OpError) as err:
            # Curvature is a diagnostic: its failure must not end the training.
            warnings.warn(
                f"GradientHealthCallback: curvature skipped ({err})",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        step = int(self.model.optimizer.iterations.numpy())
        size = int(tf.nest.flatten(x)[0].shape[0])

        def write():
            with self._writer.as_default():
                curvature.write_summary(result, step, size)

        self._guarded(write)

    def _trajectory(self):
        from tb_gradplugin import summary
        from tb_gradplugin.trajectory import project_parameters

        variables = self.model.trainable_variables
        vector = project_parameters(
            variables, dim=self.trajectory_dim, seed=self.trajectory_seed
        )
        n_params = int(sum(np.prod(v.shape) for v in variables))
        step = int(self.model.optimizer.iterations.numpy())
        with self._writer.as_default():
            summary.write_trajectory(vector, step, self.trajectory_seed, n_params)

    def _flush(self):
        self._last_flush = time.monotonic()
        self._writer.flush()
        # TensorFlow's writer reports nothing when its file is gone (directory
        # removed or replaced): check, so that the loss is reported.
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
            warnings.warn(
                f"GradientHealthCallback: writing to {self.log_dir!r} failed "
                f"({type(err).__name__}: {err}); gradient health is no longer "
                "recorded for this run, training goes on.",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
