"""In the step: the gradient an update applies, as the statistics must see it.

Under a distribution strategy the gradients inside the step are per replica,
scaled by 1/replicas before the all-reduce: the statistics are of the summed,
global gradient (read from Keras's own all-reduce where possible). Under
gradient accumulation a step is an applied update: its gradient is the mean
over the batches it applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf


def reads_keras_all_reduce(
    strategy: tf.distribute.Strategy, optimizer: Any, unscale: bool
) -> bool:
    """Whether the statistics can use the gradients Keras all-reduces.

    Under a distribution strategy Keras's TensorFlow optimizer sums the
    replicas' gradients in ``_all_reduce_sum_gradients``, in the replica
    context of the step, before the update; reading them there saves a
    second all-reduce of the whole gradient. Not where the update runs in
    a conditional branch (loss scaling, gradient accumulation) or on
    transformed gradients (clipping, a loss scale factor): there the
    statistics all-reduce the gradients themselves.

    Args:
        strategy: The model's distribution strategy.
        optimizer: ``model.optimizer``.
        unscale: Whether its gradients are scaled by a loss scale.
    """
    return (
        strategy.num_replicas_in_sync > 1
        and hasattr(optimizer, "_all_reduce_sum_gradients")
        and not unscale
        and not getattr(optimizer, "gradient_accumulation_steps", None)
        and not any(
            getattr(optimizer, name, None)
            for name in ("clipnorm", "clipvalue", "global_clipnorm")
        )
    )


def replica_context() -> tf.distribute.ReplicaContext | None:
    """The replica context when several replicas run the step, else ``None``."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return None
    return ctx


def summed_over_replicas(by_index: Mapping[int, Any]) -> dict[int, Any]:
    """In a replica context of several replicas: the gradients summed over them.

    Args:
        by_index: ``{variable index: this replica's gradient}``.

    Returns:
        ``{variable index: global gradient}`` (``by_index`` itself outside a
        multi-replica context).
    """
    ctx = replica_context()
    if ctx is None:
        return dict(by_index)
    keys = sorted(by_index)
    summed = ctx.all_reduce(
        tf.distribute.ReduceOp.SUM,
        [tf.convert_to_tensor(by_index[i]) for i in keys],
    )
    return dict(zip(keys, summed, strict=True))


def accumulated(
    optimizer: Any, variables: Sequence[Any], by_index: Mapping[int, Any], steps: int
):
    """Under gradient accumulation: the gradient an applying batch applies.

    The batches that only add to the accumulators are skipped rows, and the
    update's row holds the gradient it applied, the mean over its batches.

    Args:
        optimizer: The optimizer with ``gradient_accumulation_steps=steps``.
        variables: The layout's variables (``by_index`` indexes them).
        by_index: ``{variable index: this batch's gradient}``.
        steps: ``gradient_accumulation_steps``.

    Returns:
        ``(by_index, applies)``: the mean gradients, and a bool tensor saying
        whether this batch applies the update.
    """
    applies = tf.equal((optimizer._iterations + 1) % steps, 0)
    by_index = {
        i: (
            tf.convert_to_tensor(g)
            + optimizer._accumulated_gradients[
                optimizer._get_variable_index(variables[i])
            ].value
        )
        / steps
        for i, g in by_index.items()
    }
    return by_index, applies
