"""In the step: its loss and loss components, from the model's ``Mean`` metrics.

Keras logs ``loss`` as the running mean of a metric (the compiled loss tracker,
or a custom ``train_step``'s own ``Mean``). The step's own value is that
metric's change over the step: ``(total_after - total_before) / (count_after -
count_before)``, read in the graph from the metric's variables, with no host
sync.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf


def is_mean_metric(metric: Any) -> bool:
    """Whether ``metric`` keeps a running mean in ``total``/``count`` variables."""
    return isinstance(getattr(metric, "total", None), keras.Variable) and isinstance(
        getattr(metric, "count", None), keras.Variable
    )


def all_metrics(model: keras.Model) -> list:
    """The model's metrics and those they hold (a compile metrics container's)."""
    found, stack = [], list(model.metrics)
    while stack:
        m = stack.pop(0)
        found.append(m)
        stack.extend(getattr(m, "metrics", []) or [])
    return found


class StepLoss:
    """Reads a step's loss and per-step loss components from the metrics.

    Args:
        model: The model whose metrics are read.
        loss_components: Names of the loss components to record; those that
            are ``Mean`` metrics of the model now are read per step
            (:attr:`step_components`), the others per epoch from the logs.
    """

    def __init__(self, model: keras.Model, loss_components: Sequence[str]):
        self.model = model
        found = all_metrics(model)
        tracker = getattr(model, "_loss_tracker", None)
        # Every Mean of the model, those named "loss" last (the compiled
        # tracker first of them): candidates for the loss Keras logs.
        means = [m for m in found if is_mean_metric(m)]
        self.loss_metrics = [m for m in means if m.name != "loss"] + sorted(
            (m for m in means if m.name == "loss"), key=lambda m: m is not tracker
        )
        metrics = {m.name: m for m in found}
        self.step_components = [
            n for n in loss_components if is_mean_metric(metrics.get(n))
        ]
        self.component_metrics = [metrics[n] for n in self.step_components]
        self.epoch_components = [
            n for n in loss_components if n not in self.step_components
        ]

    def state(self) -> list:
        """In the step: ``(total, count)`` of every metric read, as tensors."""
        metrics = list(self.loss_metrics) + list(self.component_metrics)
        return [
            (tf.identity(m.total.value), tf.identity(m.count.value)) for m in metrics
        ]

    def components_appeared(self) -> bool:
        """Whether a per-epoch component's ``Mean`` tracker exists now.

        Keras creates some trackers (a multi-output model's per-output
        losses) in the first step; then the step is laid out again with them.
        """
        now = {m.name: m for m in all_metrics(self.model)}
        return any(is_mean_metric(now.get(n)) for n in self.epoch_components)

    def results(self, names: Sequence[str]) -> dict[str, float]:
        """On the host: the running means of those ``names`` that are Mean metrics.

        Args:
            names: Metric names.

        Returns:
            ``{name: result}`` (one read of each metric from the device).
        """
        now = {m.name: m for m in all_metrics(self.model)}
        return {n: float(now[n].result()) for n in names if is_mean_metric(now.get(n))}

    def step_values(self, logs, before, after):
        """The step's loss, whether it is known, and its loss components.

        Args:
            logs: What the original ``train_step`` returned.
            before: :meth:`state` before the step.
            after: :meth:`state` after the step.

        Returns:
            ``(loss, known, components)``: float32 scalars and a list of them.
        """
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
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
        n_loss = len(self.loss_metrics)
        loss, known = self._loss(
            logs, after[:n_loss], means[:n_loss], counted[:n_loss], ctx
        )
        return loss, known, means[n_loss:]

    def _loss(self, logs, after, means, counted, ctx):
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
