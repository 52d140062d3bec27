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

from tb_gradplugin import applied_gradients


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
        ctx = applied_gradients.replica_context()
        replicas = ctx is not None
        value = logs.get("loss") if isinstance(logs, Mapping) else None
        if value is None or not tf.is_tensor(value) or value.shape.rank != 0:
            value = None
        n_loss = len(self.loss_metrics)
        source = None
        if value is not None and not replicas:
            source = _result_of(value, before[:n_loss])
            if source is not None:
                # The logged loss is that metric's result: its step value
                # needs no comparison, and the reads the result was computed
                # from are the metric's state after the step.
                after = list(after)
                after[source[0]] = source[1]
        if replicas:
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
        seen = [c1 > c0 for (_, c0), (_, c1) in zip(before, after, strict=True)]
        if value is None:
            loss, known = tf.constant(float("nan")), tf.constant(0.0)
        else:
            loss, known = self._loss(
                tf.cast(value, tf.float32),
                after[:n_loss],
                means[:n_loss],
                seen[:n_loss],
                replicas,
                None if source is None else source[0],
            )
        return loss, known, means[n_loss:]

    def _loss(self, value, after, means, seen, replicas, source):
        """The step's value of what Keras logs as ``loss``, and whether known.

        ``logs["loss"]`` is either a Mean metric's running result (the
        compiled tracker, a custom step's ``total_loss`` tracker): then the
        step's value is that metric's mean over this step, known when the
        step updated it; or a plain tensor, the step's loss itself. A
        ``loss`` from a metric this step left unchanged: unknown, a NaN
        marked so, never a filled-in 0.

        Args:
            value: The logged loss, float32.
            after: :meth:`state` of the loss metrics after the step.
            means: Their means over the step.
            seen: Whether the step updated each (bool).
            replicas: Whether the step runs on several replicas.
            source: The index of the metric whose result ``value`` is, by
                the graph, or ``None``: then the metric is found by value.
        """
        nan = tf.constant(float("nan"))
        if replicas:
            # Replica-local results do not match the synced logs: follow
            # the metrics named "loss" that the step updated.
            loss, known = nan, tf.constant(False)
            for m, mean, hit in zip(self.loss_metrics, means, seen, strict=True):
                if m.name == "loss":
                    loss = tf.where(hit, mean, loss)
                    known = tf.logical_or(known, hit)
            return loss, tf.cast(known, tf.float32)
        if source is None:
            loss, known, later = value, tf.constant(True), range(len(after))
        else:
            # A later metric whose result equals it would be the one found by
            # value: those are still compared.
            loss, known = means[source], seen[source]
            later = range(source + 1, len(after))
        for k in later:
            total, count = after[k]
            result = tf.cast(
                tf.math.divide_no_nan(total, tf.cast(count, total.dtype)), tf.float32
            )
            hit = tf.equal(result, value)
            loss = tf.where(hit, means[k], loss)
            known = tf.where(hit, seen[k], known)
        return tf.where(known, loss, nan), tf.cast(known, tf.float32)


def _read_of(tensor):
    """The variable read a tensor is, through identities and casts, or ``None``."""
    while tensor.op.type in ("Identity", "Cast"):
        tensor = tensor.op.inputs[0]
    return tensor if tensor.op.type == "ReadVariableOp" else None


def _handle_of(tensor):
    """The name of the resource a tensor reads, or ``None`` (see :func:`_read_of`)."""
    read = _read_of(tensor)
    return None if read is None else read.op.inputs[0].name


def _result_of(value, before):
    """Which metric's ``total / count`` ``value`` is, by the graph.

    Args:
        value: The logged loss.
        before: :meth:`StepLoss.state` of the loss metrics (reads of their
            variables in this graph).

    Returns:
        ``(index, (total, count))``, the reads ``value`` divides, or ``None``
        when ``value`` is not such a result (then it is matched by value).
    """
    op = value.op
    while op.type in ("Identity", "Cast"):
        op = op.inputs[0].op
    if op.type not in ("DivNoNan", "RealDiv") or len(op.inputs) != 2:
        return None
    reads = [_read_of(t) for t in op.inputs]
    if None in reads:
        return None
    handles = tuple(r.op.inputs[0].name for r in reads)
    matches = [
        k
        for k, (t0, c0) in enumerate(before)
        if (_handle_of(t0), _handle_of(c0)) == handles
    ]
    if len(matches) != 1:
        return None
    return matches[0], tuple(reads)
