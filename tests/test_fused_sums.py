"""The fused pass (a gradient's sums and its running sum at once) against numpy."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tb_gradplugin import fused_sums, stats

SHAPES = {0: (300, 40), 1: (50, 6)}


def _gradients(seed):
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=SHAPES[0]).astype(np.float32)
    dense.reshape(-1)[::9] = 0.0
    rows = np.array([3, 0, 17, 49], np.int64)
    values = rng.normal(size=(4, 6)).astype(np.float32)
    values[1, 2] = 0.0
    return dense, rows, values


def _reference(g):
    g = g.astype(np.float64)
    return [np.sum(g**2), np.sum(np.abs(g)), np.sum(g == 0), np.sum(~np.isfinite(g))]


def test_only_large_variables_on_a_cpu_without_xla_are_fused():
    """A CPU variable of FUSED_MIN_SIZE entries is fused; a smaller one or XLA not."""
    strategy = tf.distribute.get_strategy()
    big = tf.Variable(tf.zeros([fused_sums.FUSED_MIN_SIZE]))
    assert fused_sums.eligible(big, fused_sums.FUSED_MIN_SIZE, strategy, False)
    assert not fused_sums.eligible(big, fused_sums.FUSED_MIN_SIZE, strategy, True)
    small = tf.Variable(tf.zeros([8]))
    assert not fused_sums.eligible(small, 8, strategy, False)


def test_step_sums_and_running_sums_match_numpy():
    """Dense and sparse sums equal numpy's; a skipped step adds nothing."""
    fused = fused_sums.FusedSums(SHAPES)
    total = [np.zeros(SHAPES[0], np.float32), np.zeros(SHAPES[1], np.float32)]
    for seed, add in ((0, True), (1, False), (2, True)):
        dense, rows, values = _gradients(seed)
        if seed == 2:
            dense[5, 5], dense[6, 6] = np.nan, np.inf
        after = dense * 3.0 + 1.0
        other = dense * 0.5  # the increment, or the parameters before
        increment = seed != 1
        out = fused.step(
            [
                fused_sums.Update(0, dense, None, after, other, increment),
                fused_sums.Update(1, tf.constant(values), tf.constant(rows)),
            ],
            tf.constant(add),
        ).numpy()
        table = np.zeros(SHAPES[1], np.float32)
        table[rows] = values
        a, o = after.astype(np.float64), other.astype(np.float64)
        delta = o if increment else a - o
        want = _reference(dense) + [np.sum(a**2), np.sum(delta**2)]
        np.testing.assert_allclose(out[:6], want, rtol=1e-6)
        np.testing.assert_allclose(out[6:10], _reference(table), rtol=1e-6)
        assert np.isnan(out[10:]).all()  # a sparse gradient's parameters: not here
        if add:
            total[0] += dense
            total[1] += table
    # The running sums are float32 additions in step order, as numpy's.
    np.testing.assert_array_equal(fused.running[0], total[0].reshape(-1))
    np.testing.assert_array_equal(fused.running[1], total[1].reshape(-1))


def test_close_gives_sums_slices_and_resets():
    """|S|², its zeros and a slice's |S|² equal numpy's; the sums are then 0."""
    fused = fused_sums.FusedSums(SHAPES)
    dense, rows, values = _gradients(3)
    fused.step(
        [
            fused_sums.Update(0, dense, None, dense, dense, True),
            fused_sums.Update(1, tf.constant(values), tf.constant(rows)),
        ],
        tf.constant(True),
    )
    layout = stats.Layout(["a", "b"], list(SHAPES.values()), {"s": ("a", (2, 7))})
    out = fused.close({0: layout.slices, 1: []}).numpy()
    table = np.zeros(SHAPES[1], np.float32)
    table[rows] = values
    want = [
        np.sum(dense.astype(np.float64) ** 2),
        np.sum(dense == 0),
        np.sum(dense[:, 2:7].astype(np.float64) ** 2),
        np.sum(table.astype(np.float64) ** 2),
        np.sum(table == 0),
    ]
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert not fused.running[0].any() and not fused.running[1].any()


def test_a_failing_loop_gives_no_value_and_raises_nothing(monkeypatch):
    """A loop that raises: NaN sums (no value) from then on, also at the close."""
    from tb_gradplugin import fused_kernels

    def broken(*args):
        raise RuntimeError("broken")

    monkeypatch.setattr(fused_kernels, "gradient_pass", broken)
    fused = fused_sums.FusedSums(SHAPES)
    dense, _, _ = _gradients(4)
    update = fused_sums.Update(0, dense, None, dense, dense, True)
    out = fused.step([update], tf.constant(True)).numpy()
    assert fused.failed and np.isnan(out).all()
    assert np.isnan(fused.close({0: [], 1: []}).numpy()).all()
