"""The curvature's probe batch: the first training batch, kept once."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tb_gradplugin.epoch_probes import ProbeCapture, probe_batch


def test_the_first_batch_is_kept_and_later_ones_do_not_overwrite_it():
    """Three steps through a compiled function: the probe is the first batch."""
    probe = ProbeCapture()
    assert probe.batch() is None

    @tf.function
    def step(x, y):
        probe.capture((x, y))
        return tf.reduce_sum(x)

    batches = [(np.full((2, 3), k, np.float32), np.arange(2) + k) for k in (1, 2, 3)]
    for x, y in batches:
        step(tf.constant(x), tf.constant(y))
    x, y, sample_weight = probe.batch()
    np.testing.assert_array_equal(x, batches[0][0])
    np.testing.assert_array_equal(y, batches[0][1])
    assert sample_weight is None


def test_a_batch_without_static_shapes_is_not_captured():
    """A step traced with an unknown batch size keeps no probe (no variable fits)."""
    probe = ProbeCapture()

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def step(x):
        probe.capture((x,))
        return x

    step(tf.ones((2, 3)))
    assert probe.batch() is None


def test_the_users_probe_data_comes_first():
    """probe_data=(x, y) is the probe whatever was captured."""
    x, y = np.ones((4, 2)), np.zeros(4)
    got = probe_batch((x, y), ProbeCapture())
    assert got[0] is x and got[1] is y and got[2] is None
    assert probe_batch(None, None) is None
