"""In-step sums and host window statistics against plain numpy formulas."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tb_gradplugin import stats

SHAPES = [(5, 4), (4,), (4, 3)]


def _bounds(layout):
    return zip(layout.offsets[:-1], layout.offsets[1:], strict=True)


def _arrays(seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for s in SHAPES]


def test_layout_offsets_and_slice_indices():
    """Slices on the last axis map to the right entries of the flat vector."""
    layout = stats.Layout(["a", "b", "c"], SHAPES, {"cols": ("c", (1, 3))})
    assert layout.size == 20 + 4 + 12
    flat = np.arange(layout.size)
    expected = flat[24:].reshape(4, 3)[:, 1:3].ravel()
    np.testing.assert_array_equal(layout.slices[0].flat_indices, expected)


@pytest.mark.parametrize(
    "spec, match",
    [
        (("x", (0, 1)), "not among"),
        (("c", (2, 5)), "outside"),
        (("c", (2, 2)), "outside"),
        ("c", "must be"),
    ],
)
def test_layout_rejects_bad_slices(spec, match):
    """A slice with an unknown variable or an empty or out-of-range span is refused."""
    with pytest.raises(ValueError, match=match):
        stats.Layout(["a", "b", "c"], SHAPES, {"s": spec})


def _flat(arrays):
    return np.concatenate([t.ravel() for t in arrays])


def test_variable_sums_match_numpy():
    """A variable reduced alone: Σg², Σ|g|, zeros, NaN/Inf, Σw², Σ(Δw)² as numpy's."""
    g, before, after = _arrays(0)[0], _arrays(1)[0], _arrays(2)[0]
    g[0, :2] = 0.0
    bad = g.copy()
    bad[1, 1], bad[2, 2] = np.nan, np.inf
    params = [np.sum(after**2), np.sum((after - before) ** 2)]
    grads = [np.sum(g**2), np.abs(g).sum()]
    sums = [
        stats.variable_sums(t if t is None else tf.constant(t), before, after, g.size)
        for t in (g, bad, None)
    ]
    assert [s.counted for s in sums] == [True, True, True]
    out = stats.finish_variable_sums(sums).numpy().reshape(3, 6)
    np.testing.assert_allclose(out[0], [*grads, 2.0, 0.0, *params], rtol=1e-6)
    assert out[1, 2:4].tolist() == [2.0, 2.0]
    assert np.isnan(out[2, :3]).all() and out[2, 3] == 0.0
    np.testing.assert_allclose(out[1:, 4:], [params, params], rtol=1e-6)
    # Over the bound: the zeros from one pass, valid while all are finite.
    big = np.zeros(stats.COUNTED_MAX_SIZE + 1, np.float32)
    big[:10] = np.arange(1, 11)
    alone = stats.variable_sums(tf.constant(big), big, big, big.size)
    assert not alone.counted
    assert stats.finish_variable_sums([alone]).numpy()[2:4].tolist() == [
        big.size - 10.0,
        0.0,
    ]


def test_zeros_past_exact_float_counts_are_counted_row_by_row_in_a_step():
    """Past 2**24 entries the one-pass zero count sums rows apart: still exact."""
    rows = 4100  # 4100 x 4100 entries > 2**24, a row far below
    g = np.zeros((rows, rows), np.float32)
    g[::3, ::7] = -2.0
    g[1, :5] = 0.5
    w = np.ones_like(g)
    assert g.size > stats.EXACT_FLOAT_COUNT

    @tf.function
    def step(values):
        return stats.finish_variable_sums([stats.variable_sums(values, w, w, g.size)])

    out = step(tf.constant(g)).numpy()
    nonzero = int(np.count_nonzero(g))
    assert out[2] == np.float32(g.size - nonzero)  # the count rounded once
    np.testing.assert_allclose(out[1], np.abs(g, dtype=np.float64).sum(), rtol=1e-6)
    np.testing.assert_allclose(out[0], np.sum(g.astype(np.float64) ** 2), rtol=1e-6)


def test_group_sums_match_numpy_per_variable():
    """One segment sum gives each grouped variable's six sums, empty ones included."""
    sizes = [3, 0, 5]
    rng = np.random.default_rng(7)
    g, before, after = (rng.normal(size=8).astype(np.float32) for _ in range(3))
    g[1], g[4], g[6] = 0.0, np.nan, -np.inf
    for used, xla in ((sizes, False), ([3, 5], False), ([3, 5], True)):
        out = stats.group_sums(g, before, after, used, xla).numpy()
        out = out.reshape(6, len(used))
        bounds = np.cumsum([0] + used)
        for k in range(len(used)):
            a, b = bounds[k], bounds[k + 1]
            gk, wk, dk = g[a:b], after[a:b], after[a:b] - before[a:b]
            np.testing.assert_allclose(
                out[[0, 1, 4, 5], k],
                [np.sum(gk**2), np.abs(gk).sum(), np.sum(wk**2), np.sum(dk**2)],
                rtol=1e-6,
            )
            assert out[2, k] == np.sum(gk == 0)
            assert out[3, k] == np.sum(~np.isfinite(gk))


def test_slice_and_running_sums_match_numpy():
    """A slice's Σg², Σ|g| and a running sum's |S|², zeros, slice |S|² equal numpy's."""
    layout = stats.Layout(["a", "b", "c"], SHAPES, {"cols": ("c", (1, 3))})
    spec = layout.slices[0]
    g = _arrays(5)[2]
    part = g[:, 1:3]
    out = [float(v) for v in stats.slice_sums(tf.constant(g), spec)]
    np.testing.assert_allclose(out, [np.sum(part**2), np.abs(part).sum()], 1e-6)
    g[0] = 0.0
    out = [float(v) for v in stats.running_sum_sums(tf.constant(g), g.size, [spec])]
    np.testing.assert_allclose(
        out, [np.sum(g**2), 3.0, np.sum(g[:, 1:3] ** 2)], rtol=1e-6
    )


def test_unique_rows_sums_repeated_rows():
    """Repeated rows of a sparse gradient are summed, as in its dense equivalent."""
    sparse = tf.IndexedSlices(
        values=tf.constant([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]]),
        indices=tf.constant([2, 0, 2]),
        dense_shape=tf.constant([4, 2]),
    )
    assert stats.is_sparse(sparse) and not stats.is_sparse(tf.zeros([2]))
    values, indices = stats.unique_rows(sparse)
    dense = np.zeros([4, 2], np.float32)
    dense[indices.numpy()] = values.numpy()
    np.testing.assert_array_equal(dense, tf.convert_to_tensor(sparse).numpy())
