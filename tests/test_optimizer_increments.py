"""IncrementRecorder: an optimizer's increment is used only when it is the update."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tb_gradplugin.optimizer_increments import IncrementRecorder


def _traced_update(optimizer, constraint=None):
    """One traced apply of ``optimizer`` to a 64 x 64 kernel.

    Returns:
        ``(indices found, Σ(increment)², Σ(after - before)²)`` of the step.
    """
    keras.utils.set_random_seed(0)
    w = keras.Variable(np.random.default_rng(0).normal(size=(64, 64)).astype("float32"))
    w.constraint = constraint
    optimizer.build([w])
    g = tf.constant(np.random.default_rng(1).normal(size=(64, 64)).astype("float32"))
    found = {}

    @tf.function(autograph=False)
    def step():
        before = tf.identity(w.value)
        graph = tf.compat.v1.get_default_graph()
        start = len(graph.get_operations())
        ids = {id(w): 0, id(w.value): 0}
        with IncrementRecorder([optimizer], ids, [(64, 64)]) as record:
            optimizer.apply([g], [w])
        increments = record.single_increments(graph.get_operations()[start:])
        found["indices"] = sorted(increments)
        with tf.control_dependencies([optimizer.iterations]):
            after = tf.identity(w.value)
        inc = increments.get(0, tf.constant(np.nan))
        return tf.reduce_sum(tf.square(inc)), tf.reduce_sum(tf.square(after - before))

    inc_sq, diff_sq = step()
    return found["indices"], float(inc_sq), float(diff_sq)


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.Adam(0.01),
        lambda: keras.optimizers.SGD(0.01),
        lambda: keras.optimizers.SGD(0.01, momentum=0.9),
        lambda: keras.optimizers.RMSprop(0.01),
    ],
    ids=["adam", "sgd", "sgd_momentum", "rmsprop"],
)
def test_single_increment_is_the_update(optimizer):
    """Adam, SGD, SGD with momentum, RMSprop: the increment's Σ² is the update's."""
    indices, inc_sq, diff_sq = _traced_update(optimizer())
    assert indices == [0]
    np.testing.assert_allclose(inc_sq, diff_sq, rtol=1e-4)


@pytest.mark.parametrize(
    "optimizer, constraint",
    [
        (lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1), None),
        (lambda: keras.optimizers.Adam(0.01), keras.constraints.MaxNorm(1.0)),
        (lambda: keras.optimizers.Ftrl(0.01), None),
        (lambda: keras.optimizers.Adam(0.01, gradient_accumulation_steps=2), None),
    ],
    ids=["adamw_decay", "constraint", "ftrl_assign", "accumulation"],
)
def test_other_writes_leave_the_difference(optimizer, constraint):
    """Weight decay, a constraint, an assign (Ftrl), a branch: no increment used."""
    indices, _, _ = _traced_update(optimizer(), constraint)
    assert indices == []


def test_recorder_restores_the_optimizer_methods():
    """After the block the optimizer's own assign methods are back."""
    opt = keras.optimizers.Adam(0.01)
    with IncrementRecorder([opt], {}, []):
        assert "assign_sub" in vars(opt)
    assert "assign_sub" not in vars(opt)
    assert opt.assign_sub.__func__ is type(opt).assign_sub
