"""The shim: ``train_step`` and every optimizer's ``apply``, wrapped on the instances.

The statistics come from the gradients Keras already computed: the shim wraps
the model's ``train_step`` and the ``apply`` of every optimizer the model holds
(its ``optimizer`` and the others, a GAN's), so the user changes nothing. Each
update's gradients (summed over replicas, or accumulated over batches:
``applied_gradients.py``) are reduced in the compiled step
(``step_reduction.py``); the step's loss is read from the metrics
(``step_loss.py``); the step's figures are written as one row into a ring on
the device (``ring.py``). The train
function is rebuilt so that the compiled step includes the shims (a traced
function keeps what it saw).
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import keras
import tensorflow as tf

from tb_gradplugin import applied_gradients, ring, stats
from tb_gradplugin.epoch_probes import ProbeCapture
from tb_gradplugin.optimizer_increments import IncrementRecorder
from tb_gradplugin.step_loss import StepLoss
from tb_gradplugin.step_reduction import StepReduction


def candidate_variables(model: keras.Model) -> list:
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


def optimizers_of(model: keras.Model) -> dict[str, Any]:
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


class StepShim:
    """Per model: the wrapped step that writes one ring row per step.

    Args:
        callback: The callback (its settings: slices, loss components,
            variance window, ``stop_on_nan``, curvature).
        model: The compiled model.
    """

    def __init__(self, callback: Any, model: keras.Model):
        self.cb = callback
        self.model = model
        self.optimizer = model.optimizer
        self.strategy = model.distribute_strategy
        self.is_lso = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        factor = getattr(self.optimizer, "loss_scale_factor", None)
        self.unscale = self.is_lso or bool(factor)
        self.losses = StepLoss(model, callback.loss_components)
        self.step_components = self.losses.step_components
        self.epoch_components = self.losses.epoch_components
        self.steps_per_execution = max(
            int(getattr(model, "steps_per_execution", 1) or 1), 1
        )
        self.jit = bool(getattr(model, "jit_compile", False))
        self.layout = None
        self.ring = None
        self.reduction = None
        self.optimizers = optimizers_of(model)
        # The paths each optimizer updates, as traced: which gradients the
        # global norms cover, for the tags' content.
        self.optimizer_paths: dict[str, list[str]] = {}
        self.late_components = False
        self.trace_warned = False
        self.branch_warned = False
        # The state of the step being traced, per thread: under a
        # MirroredStrategy each replica's step is traced in its own thread,
        # and they take turns at every collective.
        self._local = threading.local()
        self._local.reduced = None
        self.reused_all_reduce = False
        if model.trainable_variables:
            self._setup(candidate_variables(model))
        self.probe = None
        if callback.hessian_freq and callback.probe_data is None:
            if self.strategy.num_replicas_in_sync > 1:
                warnings.warn(
                    "GradientHealthCallback: under a distribution strategy pass "
                    "probe_data=(x, y) for the curvature; hessian_freq is ignored.",
                    stacklevel=3,
                )
            else:
                self.probe = ProbeCapture()

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
        self.reduction = StepReduction(
            self.layout, variables, self.strategy, self.jit, self.cb.variance_window
        )
        self.laid_out()

    def laid_out(self) -> None:
        """Called once the layout exists; the host side makes its reducer here."""

    def after_execution(self) -> None:
        """Called after each execution of the train function (host side)."""

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
        if applied_gradients.reads_keras_all_reduce(self.strategy, opt, self.unscale):
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

    def _train_step(self, orig_step, data):
        if self.probe is not None:
            self.probe.capture(data)
        self._local.collected = {}
        self._local.pending = None
        before = self.losses.state()
        self._local.in_step = True
        self._local.graph = tf.compat.v1.get_default_graph()
        try:
            logs = orig_step(data)
        finally:
            self._local.in_step = False
        after = self.losses.state()
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
        loss, known, components = self.losses.step_values(logs, before, after)
        if not self.late_components:
            self.late_components = self.losses.components_appeared()
        parts = self.reduction.step_parts(collected)
        closed, running = self.reduction.window_close(
            pending["skipped"], pending["step"]
        )
        # Under several replicas each holds its share of the row (and its
        # examples): summed in one all-reduce of the small row.
        parts, running, batch_size = self.reduction.combine(parts, running, batch_size)
        nonfinite = self.reduction.nonfinite(parts[0])
        pending.update(parts=parts, nonfinite=nonfinite, closed=closed)
        pending["running"] = running
        self._record(pending, loss, known, components, batch_size)
        return logs

    def _outside_step(self, name) -> bool:
        """Whether an update is not one of the traced step's own updates."""
        if not getattr(self._local, "in_step", False):
            # An update outside the train step (the user's own loop): not a
            # step of this run.
            return True
        if tf.compat.v1.get_default_graph() is not self._local.graph:
            # Inside a conditional branch of the step (a tf.cond that updates
            # some steps only): its tensors cannot leave the branch, so these
            # variables are absent from the rows rather than breaking the step.
            if not self.branch_warned:
                self.branch_warned = True
                warnings.warn(
                    f"GradientHealthCallback: {name} updates inside a conditional "
                    "branch of the train step; its variables are not recorded.",
                    stacklevel=3,
                )
            return True
        return False

    def _built(self, opt, variables) -> None:
        """Lays out the variables and builds ``opt`` if the step is their first."""
        if self.layout is None or not opt.built:
            with tf.init_scope():
                if self.layout is None:
                    known = candidate_variables(self.model)
                    ids = {id(v) for v in known}
                    self._setup(known + [v for v in variables if id(v) not in ids])
                if not opt.built:
                    opt.build(variables)

    def _keras_reduced(self):
        """The global gradients Keras summed for the update, by variable index."""
        where = {id(v.value): i for i, v in enumerate(self.variables)}
        self.reused_all_reduce = True
        return {
            where[id(v)]: g
            for g, v in self._local.reduced
            if g is not None and id(v) in where
        }

    def _by_index(self, grads, variables) -> dict:
        """The gradients of the monitored variables, by variable index."""
        by_index = {}
        for g, v in zip(grads, variables, strict=False):
            i = self.var_ids.get(id(v))
            if i is not None and g is not None:
                by_index[i] = g
        return by_index

    @staticmethod
    def _loss_scale(opt, is_lso: bool, factor):
        """The loss scale the optimizer divides its gradients by, as a tensor."""
        if is_lso:
            return tf.cast(opt.dynamic_scale, tf.float32)
        return tf.constant(float(factor or 1.0), tf.float32)

    def _note_updated(self, name: str, variables) -> list[int]:
        """The indices of the monitored variables an optimizer updates.

        Also adds their paths to that optimizer's list (the tags' content).
        """
        updated = sorted(
            {self.var_ids[id(v)] for v in variables if id(v) in self.var_ids}
        )
        paths = self.optimizer_paths.setdefault(name, [])
        paths.extend(
            p for p in (self.layout.paths[i] for i in updated) if p not in paths
        )
        return updated

    def _apply(self, name, opt, orig_apply, grads, trainable_variables):
        """Runs one optimizer's update and reduces its variables' gradients.

        Several optimizers may update parts of the model in one step (a GAN);
        each call adds the sums of the variables it updated. A variable that
        no optimizer updated at a step is absent (NaN) from that step's row.
        """
        if self._outside_step(name):
            return orig_apply(grads, trainable_variables)
        variables = (
            list(trainable_variables)
            if trainable_variables is not None
            else list(opt._trainable_variables)
        )
        grads = list(grads)
        self._built(opt, variables)
        by_index = self._by_index(grads, variables)
        primary = opt is self.optimizer
        is_lso = primary and self.is_lso
        reuse = primary and applied_gradients.reads_keras_all_reduce(
            self.strategy, opt, self.unscale
        )
        if not reuse:
            by_index = applied_gradients.summed_over_replicas(by_index)
        factor = getattr(opt, "loss_scale_factor", None)
        scale = self._loss_scale(opt, is_lso, factor)
        # Read before the update only where it tells a skipped step (an
        # overflow under loss scaling): an op less per step elsewhere.
        iteration = tf.cast(opt.iterations, tf.int64) if is_lso else None
        lr = tf.cast(opt.learning_rate, tf.float32)
        updated = self._note_updated(name, variables)
        # The parameters before the update, used for the variables whose
        # update norm is not read from the optimizer's increment (known only
        # once the update is traced): a transient copy, since the update
        # writes new buffers while these reads are alive.
        before = {i: tf.identity(self.variables[i].value) for i in updated}
        accumulate = getattr(opt, "gradient_accumulation_steps", None)
        if accumulate and not is_lso:
            by_index, applies = applied_gradients.accumulated(
                opt, self.variables, by_index, accumulate
            )
        self._local.reduced = None
        graph = tf.compat.v1.get_default_graph()
        start = len(graph.get_operations())
        with self._increments(opt) as record:
            result = orig_apply(grads, trainable_variables)
        increments = record.single_increments(graph.get_operations()[start:])
        with tf.control_dependencies([result] if result is not None else []):
            after = {i: tf.identity(self.variables[i].value) for i in updated}
            iteration_after = tf.cast(opt.iterations, tf.int64)
        if reuse and self._local.reduced is not None:
            by_index = self._keras_reduced()
        self._local.reduced = None
        skipped = tf.equal(iteration_after, iteration) if is_lso else tf.constant(False)
        if accumulate and not is_lso:
            skipped = tf.logical_not(applies)
        self.reduction.collect(
            self._local.collected,
            by_index,
            before,
            after,
            scale if is_lso or factor else None,
            skipped,
            is_lso or bool(accumulate),
            increments,
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

    def _increments(self, opt) -> IncrementRecorder:
        """What records the increments ``opt`` adds to the large variables.

        One replica only: replicas trace their steps in threads of their own,
        and the optimizer's methods are shared.
        """
        if self.strategy.num_replicas_in_sync > 1:
            return IncrementRecorder([], {}, [])
        ids = {}
        for i in self.reduction.large:
            v = self.variables[i]
            ids[id(v)] = i
            ids[id(getattr(v, "value", v))] = i
        inner = getattr(opt, "inner_optimizer", None)
        return IncrementRecorder([opt, inner], ids, self.layout.shapes)

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
