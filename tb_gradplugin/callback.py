"""The Keras callback that records gradient health as TensorBoard summaries.

How it stays cheap (DESIGN.md pitfalls 7, 10, 11, 14): the statistics are
computed inside the compiled train step, from the gradients that Keras already
computed, by wrapping the model's ``train_step`` and the optimizer's ``apply``
on the instances (the user changes nothing). The step stores the rows that are
due into a small ring buffer of variables; after each execution of the train
function, a separate non-XLA ``tf.function`` writes the new rows with
``tf.summary``. No value is read back to Python per step, and the callback
defines no batch hooks (Keras would then convert every batch's logs to numpy).
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tb_gradplugin import metadata, stats

logger = logging.getLogger(__name__)

_FLUSH_SECS = 10.0  # s between host flushes; TensorBoard reloads every 5 s.
_MAX_QUEUE = 10_000  # events held before the writer flushes by itself.
_MIN_STEPS_PER_WRITE = 16  # optimizer steps between two calls of the writer.


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


def _event_files(log_dir: str) -> list[str]:
    try:
        return [f for f in os.listdir(log_dir) if ".tfevents." in f]
    except OSError:
        return []


# Written every logged step (update_ratio is derived when writing; the loss
# scale and skipped steps only under mixed precision).
_STEP_STATS = (
    "loss",
    "grad_norm",
    "param_norm",
    "update_norm",
    "learning_rate",
    "nonfinite_grads",
    "nonfinite_loss",
)
_LAYER_STATS = (
    "grad_norm",
    "grad_mean_abs",
    "param_norm",
    "update_norm",
    "zero_fraction",
    "nonfinite_grads",
)


class _RowLayout:
    """Positions of each field in a logged row (one float32 vector per step)."""

    SCALARS = (
        *_STEP_STATS,
        "skipped_steps",
        "loss_scale",
        "window_closed",
        "w_window_steps",
        "w_grad_variance",
        "w_grad_mean_abs",
        "w_noise_scale",
        "w_grad_snr",
    )
    VECTORS = (
        *_LAYER_STATS,
        "w_grad_variance",
        "w_grad_mean_abs",
    )

    def __init__(self, num_vars: int, num_components: int, num_slices: int):
        self.index: dict[str, slice] = {}
        pos = 0
        for name in self.SCALARS:
            self.index[name] = slice(pos, pos + 1)
            pos += 1
        self.index["components"] = slice(pos, pos + num_components)
        pos += num_components
        for name in self.VECTORS:
            self.index["v_" + name] = slice(pos, pos + num_vars)
            pos += num_vars
        for name in ("s_grad_mean_abs", "s_grad_variance"):
            self.index[name] = slice(pos, pos + num_slices)
            pos += num_slices
        self.width = pos

    def pack(self, fields: Mapping[str, tf.Tensor]) -> tf.Tensor:
        parts = []
        for key, sl in sorted(self.index.items(), key=lambda kv: kv[1].start):
            n = sl.stop - sl.start
            value = fields.get(key)
            if value is None:
                parts.append(tf.zeros([n], tf.float32))
            else:
                parts.append(tf.reshape(tf.cast(value, tf.float32), [n]))
        return tf.concat(parts, axis=0)


class _ProbeCapture:
    """Keeps the first training batch in variables, as the curvature probe.

    The callback never sees the data that ``fit`` gets; the train step does.
    The copy is made once, in the graph, on the first step.
    """

    def __init__(self):
        self.vars = None
        self.structure = None
        self.done = None

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
                self.done = tf.Variable(False, trainable=False)
            self.structure = data
        if len(flat) != len(self.vars) or any(
            t.shape != v.shape for t, v in zip(flat, self.vars, strict=True)
        ):
            return

        def store():
            for v, t in zip(self.vars, flat, strict=True):
                v.assign(t)
            self.done.assign(True)
            return tf.constant(True)

        tf.cond(self.done, lambda: tf.constant(False), store)

    def batch(self):
        """Returns ``(x, y, sample_weight)`` of the captured batch, or ``None``."""
        if self.vars is None or not bool(self.done.numpy()):
            return None
        data = tf.nest.pack_sequence_as(self.structure, [v.numpy() for v in self.vars])
        return keras.utils.unpack_x_y_sample_weight(data)


class _Monitor:
    """Per-model state: variables, the shims and the writer function."""

    def __init__(self, callback: GradientHealthCallback, model: keras.Model):
        self.cb = callback
        self.model = model
        self.optimizer = model.optimizer
        self.strategy = model.distribute_strategy
        self.is_lso = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        self.loss_metric = getattr(model, "_loss_tracker", None)
        metrics = {m.name: m for m in _all_metrics(model)}
        if self.loss_metric is None and _is_mean_metric(metrics.get("loss")):
            self.loss_metric = metrics["loss"]
        self.step_components = [
            n for n in callback.loss_components if _is_mean_metric(metrics.get(n))
        ]
        self.component_metrics = [metrics[n] for n in self.step_components]
        self.epoch_components = [
            n for n in callback.loss_components if n not in self.step_components
        ]
        freq = callback.update_freq
        self.epoch_mode = freq == "epoch"
        self.freq = 1 if self.epoch_mode else int(freq)
        spe = max(int(getattr(model, "steps_per_execution", 1) or 1), 1)
        self.spe = spe
        # Host calls the writer every `calls_per_write` executions, at least
        # _MIN_STEPS_PER_WRITE steps apart (a call costs ~0.1 ms, a 2 ms step
        # can't pay it each time); the ring holds every row made in between,
        # plus slack for a short last execution.
        steps = max(self.freq, _MIN_STEPS_PER_WRITE)
        self.calls_per_write = 1 if self.epoch_mode else max(1, steps // spe)
        self.ring = (
            1
            if self.epoch_mode
            else (math.ceil(self.calls_per_write * spe / self.freq) + 2)
        )
        window = callback.variance_window
        self.window_epoch = window == "epoch"
        self.window = 0 if self.window_epoch else int(window)
        self.layout = None
        self.writer = None
        self._writer_fns = None
        if model.trainable_variables:
            self._setup(list(model.trainable_variables))
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
        self.calls = 0
        self.executor = None
        self.future = None
        self.trace_warned = False
        self.active = False

    # -- state -------------------------------------------------------------
    def _setup(self, variables):
        """Lays out the variables and creates the state (once they exist).

        A subclassed model may be built only by its first train step (Keras
        defers the build without a distribution strategy); then this runs while
        that step is traced, lifted out of the graph.
        """
        self.variables = variables
        self.var_ids = {id(v): i for i, v in enumerate(variables)}
        self.layout = stats.Layout(
            [v.path for v in variables], [v.shape for v in variables], self.cb.slices
        )
        self.row = _RowLayout(
            self.layout.num_variables,
            len(self.step_components),
            len(self.layout.slices),
        )
        self._make_variables()

    def _var(self, value, dtype=tf.float32):
        return tf.Variable(
            tf.constant(value, dtype),
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_WRITE,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    def _make_variables(self):
        p, v = self.layout.size, self.layout.num_variables
        s = len(self.layout.slices)
        with self.strategy.scope():
            self.rows = self._var(np.zeros([self.ring, self.row.width], np.float32))
            self.row_steps = self._var(np.full([self.ring], -1, np.int64), tf.int64)
            self.row_count = self._var(0, tf.int64)
            self.last_row_step = self._var(-1, tf.int64)
            self.last_written = self._var(-1, tf.int64)
            self.pending_nonfinite = self._var(np.zeros([v], np.float32))
            self.pending_nonfinite_loss = self._var(0.0)
            self.pending_skipped = self._var(0.0)
            self.nan_seen = self._var(0, tf.int32)
            self.w_shift = self._var(np.zeros([p], np.float32))
            self.w_sum1 = self._var(np.zeros([p], np.float32))
            self.w_sum2 = self._var(np.zeros([p], np.float32))
            self.w_count = self._var(0.0)
            self.w_abs = self._var(np.zeros([v], np.float32))
            self.w_slice_abs = self._var(np.zeros([s], np.float32))
            self.batch_size = self._var(0.0)
        self.window_vars = [
            self.w_shift,
            self.w_sum1,
            self.w_sum2,
            self.w_count,
            self.w_abs,
            self.w_slice_abs,
        ]

    # -- in-graph shims ----------------------------------------------------
    def install(self):
        """Wraps train_step, optimizer.apply and the train function.

        Forces a rebuild of the train function so that the compiled step
        includes the shims (pitfall 11: a traced function keeps what it saw).
        """
        model, opt = self.model, self.optimizer
        if not opt.built and self.layout is not None:
            # The shim reads optimizer state (the loss scale) before the first
            # apply, which is where Keras would build it.
            with self.strategy.scope():
                opt.build(self.variables)
        if not getattr(model.train_step, "_gradient_health", False):
            orig_step = model.train_step

            def train_step(data):
                return self._train_step(orig_step, data)

            train_step._gradient_health = True
            train_step._original = orig_step
            model.train_step = train_step
        if not getattr(opt.apply, "_gradient_health", False):
            orig_apply = opt.apply

            def apply(grads, trainable_variables=None):
                return self._apply(orig_apply, grads, trainable_variables)

            apply._gradient_health = True
            apply._original = orig_apply
            opt.apply = apply
        model.make_train_function(force=True)
        orig_fn = model.train_function

        def train_function(iterator):
            logs = orig_fn(iterator)
            self.after_execution()
            return logs

        train_function._gradient_health_monitor = self
        model.train_function = train_function

    def _train_step(self, orig_step, data):
        if self.probe is not None:
            self.probe.capture(data)
        self._pending = None
        before = self._metric_state()
        logs = orig_step(data)
        after = self._metric_state()
        pending = self._pending
        self._pending = None
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
        loss = tf.constant(0.0)
        if self.loss_metric is not None:
            (t0, c0), (t1, c1) = before[0], after[0]
            loss = tf.math.divide_no_nan(t1 - t0, c1 - c0)
        n = len(self.step_components)
        components = [
            tf.math.divide_no_nan(t1 - t0, c1 - c0)
            for (t0, c0), (t1, c1) in zip(
                before[len(before) - n :], after[len(after) - n :], strict=True
            )
        ]
        components = tf.stack(components) if components else tf.zeros([0])
        # Plain graph ops in the step (inlined into the model's XLA cluster
        # under jit_compile). A separate XLA cluster for them measured slower
        # on CPU: +0.60 ms against +0.29 ms a step on the 784-20-20-10 MLP
        # (1.36 ms plain), for its launch and state copies.
        self._commit(
            pending["grads"],
            pending["before"],
            pending["after"],
            tf.cast(loss, tf.float32),
            tf.cast(components, tf.float32),
            batch_size,
            pending["lr"],
            pending["step"],
            pending["skipped"],
            pending["loss_scale"],
        )
        return logs

    def _metric_state(self):
        metrics = ([self.loss_metric] if self.loss_metric is not None else []) + list(
            self.component_metrics
        )
        return [
            (tf.identity(m.total.value), tf.identity(m.count.value)) for m in metrics
        ]

    def _apply(self, orig_apply, grads, trainable_variables):
        variables = (
            list(trainable_variables)
            if trainable_variables is not None
            else list(self.optimizer._trainable_variables)
        )
        grads = list(grads)
        if self.layout is None or not self.optimizer.built:
            with tf.init_scope():
                if self.layout is None:
                    self._setup(variables)
                if not self.optimizer.built:
                    self.optimizer.build(variables)
        by_index = {}
        for g, v in zip(grads, variables, strict=False):
            i = self.var_ids.get(id(v))
            if i is not None and g is not None:
                by_index[i] = g
        ctx = tf.distribute.get_replica_context()
        full = [
            by_index.get(i, tf.zeros(self.layout.shapes[i], tf.float32))
            for i in range(self.layout.num_variables)
        ]
        full = [
            tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
            for g in full
        ]
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            # Replica gradients are scaled by 1/replicas before the all-reduce
            # (pitfall 8); the statistics are of the summed, global gradient.
            full = ctx.all_reduce(tf.distribute.ReduceOp.SUM, full)
        if self.is_lso:
            scale = tf.cast(self.optimizer.dynamic_scale, tf.float32)
        else:
            factor = getattr(self.optimizer, "loss_scale_factor", None)
            scale = tf.constant(float(factor or 1.0), tf.float32)
        iteration = tf.cast(self.optimizer.iterations, tf.int64)
        lr = tf.cast(self.optimizer.learning_rate, tf.float32)
        before = [tf.identity(v.value) for v in self.variables]
        with tf.control_dependencies(before):
            result = orig_apply(grads, trainable_variables)
        with tf.control_dependencies([result] if result is not None else []):
            after = [tf.identity(v.value) for v in self.variables]
            iteration_after = tf.cast(self.optimizer.iterations, tf.int64)
        self._pending = {
            "grads": full,
            "before": before,
            "after": after,
            "lr": lr,
            "step": iteration_after,
            "skipped": (
                tf.equal(iteration_after, iteration)
                if self.is_lso
                else tf.constant(False)
            ),
            "loss_scale": scale,
        }
        return result

    def _commit(
        self,
        grads,
        before,
        after,
        loss,
        components,
        batch_size,
        lr,
        step,
        skipped,
        scale,
    ):
        """Accumulates one step and stores its row when the step is logged."""
        layout = self.layout
        grads = [tf.cast(g, tf.float32) / scale for g in grads]
        grad = stats.flatten(grads)
        sums = stats.variable_sums(grads, before, after)
        loss_bad = tf.logical_not(tf.math.is_finite(loss))
        nonfinite = sums["grad_nonfinite"]
        pending_nf = self.pending_nonfinite + nonfinite
        pending_nl = self.pending_nonfinite_loss + tf.cast(loss_bad, tf.float32)
        pending_sk = self.pending_skipped + tf.cast(skipped, tf.float32)
        any_bad = tf.logical_or(loss_bad, tf.reduce_sum(nonfinite) > 0)
        if self.is_lso:
            any_bad = tf.logical_and(loss_bad, tf.logical_not(skipped))
        updates = [
            self.nan_seen.assign(tf.maximum(self.nan_seen, tf.cast(any_bad, tf.int32))),
            self.batch_size.assign(batch_size),
        ]
        # Window moments: a skipped (overflowed) step is no gradient sample.
        take = tf.logical_not(skipped)
        g = grad
        first = tf.equal(self.w_count, 0.0)
        shift = tf.where(first, g, self.w_shift)
        d = g - shift
        w_sum1 = self.w_sum1 + d
        w_sum2 = self.w_sum2 + tf.square(d)
        w_count = self.w_count + 1.0
        w_abs = self.w_abs + sums["grad_abs"]
        w_slice = self.w_slice_abs + stats.slice_abs_sums(layout, tf.abs(g))
        new_window = [shift, w_sum1, w_sum2, w_count, w_abs, w_slice]
        if self.is_lso:
            new_window = [
                tf.where(take, new, old)
                for new, old in zip(
                    new_window, [v.value() for v in self.window_vars], strict=True
                )
            ]

        if self.epoch_mode:
            log_now = tf.constant(True)
        else:
            # A skipped (overflowed) step leaves `iterations` as it was: it gets
            # no row of its own, its counts go to the next logged step.
            log_now = tf.logical_and(
                tf.logical_or(tf.equal(step % self.freq, 0), tf.equal(step, 1)),
                tf.logical_and(
                    tf.not_equal(step, self.last_row_step), tf.logical_not(skipped)
                ),
            )
        close_now = tf.constant(False)
        if not self.window_epoch:
            close_now = tf.logical_and(
                log_now, tf.logical_and(tf.equal(step % self.window, 0), step > 0)
            )
        # Only the steps of an epoch window never close it in the graph: no
        # cond and no selects for them (a few ops less per step).
        final_window = new_window
        wstats = stats.empty_window_statistics(layout)
        if not self.window_epoch:
            moments = stats.WindowMoments(*new_window)
            wstats = tf.cond(
                close_now,
                lambda: stats.window_statistics(layout, moments, batch_size),
                lambda: stats.empty_window_statistics(layout),
            )
            final_window = [
                tf.where(close_now, tf.zeros_like(w), w) for w in new_window
            ]
        updates += [
            v.assign(w) for v, w in zip(self.window_vars, final_window, strict=True)
        ]

        sizes = tf.constant(layout.sizes_array)
        fields = {
            "loss": loss,
            "grad_norm": tf.sqrt(tf.reduce_sum(sums["grad_sq"])),
            "param_norm": tf.sqrt(tf.reduce_sum(sums["param_sq"])),
            "update_norm": tf.sqrt(tf.reduce_sum(sums["update_sq"])),
            "learning_rate": lr,
            "nonfinite_grads": tf.reduce_sum(pending_nf),
            "nonfinite_loss": pending_nl,
            "skipped_steps": pending_sk,
            "loss_scale": scale,
            "window_closed": tf.cast(close_now, tf.float32),
            "w_window_steps": wstats["window_steps"],
            "w_grad_variance": wstats["grad_variance"],
            "w_grad_mean_abs": wstats["grad_mean_abs"],
            "w_noise_scale": wstats["noise_scale"],
            "w_grad_snr": wstats["grad_snr"],
            "components": components,
            "v_grad_norm": tf.sqrt(sums["grad_sq"]),
            "v_grad_mean_abs": sums["grad_abs"] / sizes,
            "v_param_norm": tf.sqrt(sums["param_sq"]),
            "v_update_norm": tf.sqrt(sums["update_sq"]),
            "v_zero_fraction": sums["grad_zero"] / sizes,
            "v_nonfinite_grads": pending_nf,
            "v_w_grad_variance": wstats["layer_grad_variance"],
            "v_w_grad_mean_abs": wstats["layer_grad_mean_abs"],
            "s_grad_mean_abs": wstats["slice_grad_mean_abs"],
            "s_grad_variance": wstats["slice_grad_variance"],
        }
        row = self.row.pack(fields)
        slot = self.row_count % self.ring
        reset = tf.logical_and(log_now, tf.constant(not self.epoch_mode))
        updates += [
            self.rows.assign(
                tf.where(
                    log_now,
                    tf.tensor_scatter_nd_update(self.rows, [[slot]], [row]),
                    self.rows,
                )
            ),
            self.row_steps.assign(
                tf.where(
                    log_now,
                    tf.tensor_scatter_nd_update(self.row_steps, [[slot]], [step]),
                    self.row_steps,
                )
            ),
            self.row_count.assign(
                self.row_count
                + tf.cast(tf.logical_and(log_now, not self.epoch_mode), tf.int64)
            ),
            self.last_row_step.assign(tf.where(log_now, step, self.last_row_step)),
            self.pending_nonfinite.assign(
                tf.where(reset, tf.zeros_like(pending_nf), pending_nf)
            ),
            self.pending_nonfinite_loss.assign(tf.where(reset, 0.0, pending_nl)),
            self.pending_skipped.assign(tf.where(reset, 0.0, pending_sk)),
        ]
        tf.group(updates)

    # -- host side ---------------------------------------------------------
    def after_execution(self):
        self.calls += 1
        if not self.active or self.layout is None:
            return
        if self.calls % self.calls_per_write == 0 and not self.epoch_mode:
            self.cb._guarded(self.write_async)
        if self.cb.stop_on_nan and int(self.nan_seen.numpy()):
            logger.warning("GradientHealthCallback: NaN/Inf seen; stopping training.")
            self.model.stop_training = True
        self.cb._maybe_flush()

    def write_async(self):
        """Snapshots the ring here, writes it on the writer thread.

        The snapshot is taken between two executions, so it is consistent; the
        summary ops then run beside the next steps instead of before them.
        """
        fns = self._fns()
        self.drain()
        rows = fns["snapshot"]()
        if self.executor is None:
            self.executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="gradient_health_writer"
            )
        self.future = self.executor.submit(fns["write_snapshot"], *rows)

    def drain(self):
        """Waits for the write in flight; re-raises its error, if any."""
        future, self.future = self.future, None
        if future is not None:
            future.result()

    def build_writer_functions(self, writer):
        """Sets the writer; its functions are made once the layout exists."""
        if writer is not self.writer:
            self.writer = writer
            self._writer_fns = None

    def _fns(self):
        """The writer functions, made on first use (None before any step)."""
        if self._writer_fns is None and self.layout is not None:
            self._writer_fns = self._make_writer_functions(self.writer)
        return self._writer_fns

    def write_rows(self):
        """Writes the due rows now (after any write still in flight)."""
        fns = self._fns()
        if fns is not None:
            self.drain()
            fns["write_snapshot"](*fns["snapshot"]())

    def close_epoch_window(self):
        """Writes the epoch's window statistics and starts a new window."""
        fns = self._fns()
        if fns is not None:
            fns["close_epoch_window"]()

    def reset_pending(self):
        """Zeroes the counts since the last logged step."""
        fns = self._fns()
        if fns is not None:
            fns["reset_pending"]()

    @property
    def tags(self) -> dict[str, bytes]:
        """The serialized metadata of every tag."""
        return self._fns()["tags"]

    def _make_writer_functions(self, writer):
        tags = self._tag_metadata()
        row = self.row

        def write_row(values, step):
            def field(name):
                return values[row.index[name]]

            def scalar(name):
                return field(name)[0]

            for stat in _STEP_STATS:
                tf.summary.write(
                    metadata.step_tag(stat),
                    scalar(stat),
                    step=step,
                    metadata=tags[metadata.step_tag(stat)],
                )
            tf.summary.write(
                metadata.step_tag("update_ratio"),
                tf.math.divide_no_nan(scalar("update_norm"), scalar("param_norm")),
                step=step,
                metadata=tags[metadata.step_tag("update_ratio")],
            )
            if self.is_lso:
                for stat in ("skipped_steps", "loss_scale"):
                    tf.summary.write(
                        metadata.step_tag(stat),
                        scalar(stat),
                        step=step,
                        metadata=tags[metadata.step_tag(stat)],
                    )
            comps = field("components")
            for i, name in enumerate(self.step_components):
                tag = metadata.loss_component_tag(name)
                tf.summary.write(tag, comps[i], step=step, metadata=tags[tag])
            for stat in _LAYER_STATS:
                tag = metadata.layer_tag(stat)
                tf.summary.write(tag, field("v_" + stat), step=step, metadata=tags[tag])
            tag = metadata.layer_tag("update_ratio")
            tf.summary.write(
                tag,
                tf.math.divide_no_nan(field("v_update_norm"), field("v_param_norm")),
                step=step,
                metadata=tags[tag],
            )

            def write_window():
                self._write_window(
                    {
                        "window_steps": scalar("w_window_steps"),
                        "grad_variance": scalar("w_grad_variance"),
                        "grad_mean_abs": scalar("w_grad_mean_abs"),
                        "noise_scale": scalar("w_noise_scale"),
                        "grad_snr": scalar("w_grad_snr"),
                        "layer_grad_variance": field("v_w_grad_variance"),
                        "layer_grad_mean_abs": field("v_w_grad_mean_abs"),
                        "slice_grad_mean_abs": field("s_grad_mean_abs"),
                        "slice_grad_variance": field("s_grad_variance"),
                    },
                    step,
                    tags,
                )
                return tf.constant(True)

            if not self.window_epoch:
                tf.cond(
                    scalar("window_closed") > 0,
                    write_window,
                    lambda: tf.constant(False),
                )
            return tf.constant(True)

        @tf.function(autograph=False)
        def snapshot():
            return (
                self.rows.read_value(),
                self.row_steps.read_value(),
                self.row_count.read_value(),
            )

        @tf.function(autograph=False)
        def write_snapshot(rows, row_steps, start):
            with writer.as_default():
                last = self.last_written.read_value()

                # Oldest slot first: TensorBoard drops data written out of step
                # order (it reads a smaller step as a restart and purges). A
                # loop, not an unrolled one: tracing 18 rows took seconds.
                def body(k):
                    r = (start + k) % self.ring
                    step = tf.gather(row_steps, r)
                    tf.cond(
                        step > last,
                        lambda: write_row(tf.gather(rows, r), step),
                        lambda: tf.constant(False),
                    )
                    return (k + 1,)

                tf.while_loop(
                    lambda k: k < self.ring, body, (tf.constant(0, tf.int64),)
                )
                self.last_written.assign(tf.maximum(last, tf.reduce_max(row_steps)))

        @tf.function(autograph=False)
        def close_epoch_window():
            moments = stats.WindowMoments(*[v.value() for v in self.window_vars])
            wstats = stats.window_statistics(
                self.layout, moments, self.batch_size.value()
            )
            step = tf.cast(self.optimizer.iterations, tf.int64)
            with writer.as_default():

                def write():
                    self._write_window(wstats, step, tags)
                    return tf.constant(True)

                tf.cond(self.w_count > 0, write, lambda: tf.constant(False))
            for v in self.window_vars:
                v.assign(tf.zeros_like(v))

        @tf.function(autograph=False)
        def reset_pending():
            self.pending_nonfinite.assign(tf.zeros_like(self.pending_nonfinite))
            self.pending_nonfinite_loss.assign(0.0)
            self.pending_skipped.assign(0.0)

        return {
            "snapshot": snapshot,
            "write_snapshot": write_snapshot,
            "close_epoch_window": close_epoch_window,
            "reset_pending": reset_pending,
            "tags": tags,
        }

    def _write_window(self, w, step, tags):
        for stat in metadata.WINDOW_SCALARS:
            tag = metadata.window_tag(stat)
            tf.summary.write(tag, w[stat], step=step, metadata=tags[tag])
        for stat in metadata.WINDOW_LAYER_STATS:
            tag = metadata.window_layer_tag(stat)
            tf.summary.write(tag, w["layer_" + stat], step=step, metadata=tags[tag])
        for i, s in enumerate(self.layout.slices):
            for stat in metadata.SLICE_STATS:
                tag = metadata.slice_tag(s.name, stat)
                tf.summary.write(
                    tag, w["slice_" + stat][i], step=step, metadata=tags[tag]
                )

    def _tag_metadata(self) -> dict[str, bytes]:
        variables = {"variables": self.layout.paths}
        common = {"update_freq": self.cb.update_freq}
        tags: dict[str, Any] = {}
        for stat, text in metadata.STEP_SCALARS.items():
            tags[metadata.step_tag(stat)] = metadata.create_summary_metadata(
                text, common
            )
        for stat, text in metadata.LAYER_STATS.items():
            tags[metadata.layer_tag(stat)] = metadata.create_summary_metadata(
                text, variables, tensor=True
            )
        window = {"window": self.cb.variance_window}
        for stat, text in metadata.WINDOW_SCALARS.items():
            tags[metadata.window_tag(stat)] = metadata.create_summary_metadata(
                text, window
            )
        for stat, text in metadata.WINDOW_LAYER_STATS.items():
            tags[metadata.window_layer_tag(stat)] = metadata.create_summary_metadata(
                text, {**variables, **window}, tensor=True
            )
        for s in self.layout.slices:
            content = {
                "variable": s.variable,
                "start": s.start,
                "stop": s.stop,
                **window,
            }
            for stat, text in metadata.SLICE_STATS.items():
                tags[metadata.slice_tag(s.name, stat)] = (
                    metadata.create_summary_metadata(text, content)
                )
        for name in self.cb.loss_components:
            tags[metadata.loss_component_tag(name)] = metadata.create_summary_metadata(
                f"loss component {name}",
                {"per_step": name in self.step_components},
            )
        return {k: v.SerializeToString() for k, v in tags.items()}


class GradientHealthCallback(keras.callbacks.Callback):
    """Records gradient health during ``model.fit`` as TensorBoard summaries.

    Per logged step: the loss, the global gradient, parameter and update norms
    and the update/parameter ratio, the learning rate; per trainable variable
    (by ``.path``) the gradient L2 norm, mean ``|g|``, parameter norm, update
    norm and ratio, the share of exactly-zero gradient entries and the count of
    NaN/Inf entries. Per window of steps: the per-entry gradient variance over
    the window's steps (averaged over entries) and the average gradient
    magnitude, per variable, for the whole model (with the gradient noise
    scale) and per named slice. The statistics come from the gradients Keras
    already computed, inside the compiled step; nothing is read back per step.

    Args:
        log_dir: Where to write the event files; with ``tensorboard --logdir``
            on its parent the run is named after it.
        update_freq: Log every N optimizer steps (``1`` = every step), or
            ``"epoch"`` for the last step of each epoch. Step 1 is always
            logged. Defaults to ``1``.
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
            gradient (a multiple of ``update_freq``), or ``"epoch"``. Defaults to
            ``None``: ``update_freq`` when it is at least 2 steps, else
            ``"epoch"`` (a one-step window has no variance).
        stop_on_nan: Stop training, like ``keras.callbacks.TerminateOnNaN``, once
            the loss or a gradient is NaN/Inf (reads one flag per execution).
            Defaults to ``False``: keep training and keep logging the evidence.
        on_flag: ``"warn"`` logs a warning when the diagnosis rules raise an
            error-severity flag at an epoch end, ``"stop"`` also stops training,
            ``None`` turns live diagnosis off. Defaults to ``"warn"``.
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
        update_freq: int | str = 1,
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
        if update_freq != "epoch" and (
            isinstance(update_freq, bool)
            or not isinstance(update_freq, int)
            or update_freq < 1
        ):
            raise ValueError(
                f"update_freq must be a positive int or 'epoch', got {update_freq!r}"
            )
        if variance_window is None:
            variance_window = (
                update_freq if update_freq != "epoch" and update_freq >= 2 else "epoch"
            )
        if variance_window != "epoch":
            if not isinstance(variance_window, int) or variance_window < 1:
                raise ValueError(
                    "variance_window must be a positive int or 'epoch', got "
                    f"{variance_window!r}"
                )
            if update_freq == "epoch" or variance_window % update_freq:
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
            monitor = _Monitor(self, model)
            monitor.install()
        self._monitor = monitor
        self._write_failed = False
        self._guarded(self._open_writer)
        monitor.active = self._writer is not None
        first_step = int(model.optimizer.iterations.numpy()) == 0
        if monitor.active and self.trajectory_freq and first_step:
            self._guarded(self._trajectory)

    def on_epoch_end(self, epoch, logs=None):
        """Writes the epoch's pending rows, windows and per-epoch components."""
        mon = self._monitor
        if mon is None or not mon.active:
            return
        logs = logs or {}
        self._guarded(self._epoch_end_writes, epoch, logs)
        if self.hessian_freq and (epoch + 1) % self.hessian_freq == 0:
            self._curvature()
        if self.trajectory_freq and (epoch + 1) % self.trajectory_freq == 0:
            self._guarded(self._trajectory)
        self._guarded(self._flush)
        if self.on_flag is not None and not self._write_failed:
            self._live_check(epoch)

    def on_train_end(self, logs=None):
        """Writes what is left and flushes the writer.

        The writer stays open for the next ``fit`` with this callback (one
        event file per run, and the writer functions need no new trace); call
        :meth:`close` to release it earlier.
        """
        mon = self._monitor
        if mon is not None and mon.active:
            self._guarded(mon.write_rows)
            self._guarded(self._flush)
            mon.active = False

    def close(self) -> None:
        """Flushes and closes the event writer; a later ``fit`` opens a new one."""
        if self._writer is not None:
            self._guarded(self._writer.close)
        self._writer = None

    # -- helpers -----------------------------------------------------------
    def _open_writer(self):
        if self._writer is None:
            existing = set(_event_files(self.log_dir))
            self._writer = tf.summary.create_file_writer(
                self.log_dir, max_queue=_MAX_QUEUE, flush_millis=int(_FLUSH_SECS * 1000)
            )
            self._writer.flush()
            new = sorted(set(_event_files(self.log_dir)) - existing)
            self._event_file = os.path.join(self.log_dir, new[-1]) if new else None
        if getattr(self._monitor, "writer", None) is not self._writer:
            self._monitor.build_writer_functions(self._writer)

    def _epoch_end_writes(self, epoch, logs):
        mon = self._monitor
        mon.write_rows()
        if mon.epoch_mode:
            mon.reset_pending()
        if mon.window_epoch:
            mon.close_epoch_window()
        if mon.epoch_components:
            step = int(mon.optimizer.iterations.numpy())
            with self._writer.as_default():
                for name in mon.epoch_components:
                    if name in logs:
                        tag = metadata.loss_component_tag(name)
                        tf.summary.write(
                            tag,
                            tf.constant(float(logs[name]), tf.float32),
                            step=step,
                            metadata=mon.tags[tag],
                        )

    def _live_check(self, epoch):
        from tb_gradplugin import live

        try:
            if self._live is None:
                self._live = live.LiveDiagnosis(self.log_dir)
            flags = self._live.new_errors()
        except Exception as err:  # noqa: BLE001 - a diagnostic never ends training
            logger.warning("GradientHealthCallback: live diagnosis failed: %s", err)
            self.on_flag = None
            return
        for flag in flags:
            where = f" in {flag.layer}" if flag.layer else ""
            logger.warning(
                "Gradient health, epoch %d: %s%s (steps %s-%s): %s Advice: %s",
                epoch + 1,
                flag.kind,
                where,
                flag.first_step,
                flag.last_step,
                flag.message,
                flag.advice,
            )
            warnings.warn(
                f"GradientHealthCallback: {flag.kind}{where} at steps "
                f"{flag.first_step}-{flag.last_step}: {flag.message}",
                RuntimeWarning,
                stacklevel=2,
            )
        if flags and self.on_flag == "stop":
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
        from tb_gradplugin import curvature, summary

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
                summary.write_curvature(result, step, size)

        self._guarded(write)

    def _trajectory(self):
        from tb_gradplugin import curvature, summary

        variables = self.model.trainable_variables
        vector = curvature.project_parameters(
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

    def _maybe_flush(self):
        if time.monotonic() - self._last_flush > _FLUSH_SECS:
            self._guarded(self._flush)

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
