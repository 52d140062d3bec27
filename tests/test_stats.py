"""Block statistics (numpy, on the writer thread) against plain numpy formulas."""

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


def test_block_sums_match_numpy():
    """Per-step sums of squares, |g|, zeros, NaN/Inf and updates match numpy."""
    layout = stats.Layout(["a", "b", "c"], SHAPES, {"cols": ("c", (1, 3))})
    g = [_arrays(0), _arrays(3)]
    g[0][0][0, :2] = 0.0
    g[1][2][1, 1] = np.nan
    g[1][2][2, 2] = np.inf
    params = [_arrays(1), _arrays(2)]
    prev = _flat(_arrays(4))
    out = stats.block_sums(
        layout,
        np.stack([_flat(t) for t in g]),
        np.stack([_flat(t) for t in params]),
        prev,
    )
    bounds = list(_bounds(layout))
    before = [prev, _flat(params[0])]
    for r in range(2):
        flat_p = _flat(params[r])
        update = flat_p - before[r]
        np.testing.assert_allclose(
            out["param_sq"][r], [np.sum(flat_p[o:e] ** 2) for o, e in bounds], 1e-5
        )
        np.testing.assert_allclose(
            out["update_sq"][r], [np.sum(update[o:e] ** 2) for o, e in bounds], 1e-5
        )
    np.testing.assert_allclose(
        out["grad_sq"][0], [np.sum(t**2) for t in g[0]], rtol=1e-5
    )
    assert np.isnan(out["grad_sq"][1, 2])
    np.testing.assert_allclose(
        out["grad_abs"][0], [np.abs(t).sum() for t in g[0]], rtol=1e-5
    )
    np.testing.assert_array_equal(out["grad_zero"], [[2, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(out["grad_nonfinite"], [[0, 0, 0], [0, 0, 2]])
    idx = layout.slices[0].flat_indices
    np.testing.assert_allclose(
        out["slice_abs"][0], [np.abs(_flat(g[0])[idx]).sum()], rtol=1e-5
    )


def test_block_sums_of_some_rows_equal_the_full_ones_there():
    """rows= computes the logged rows' columns as a full pass does, others' sums too."""
    layout = stats.Layout(["a", "b", "c"], SHAPES, {"cols": ("c", (1, 3))})
    grads = np.stack([_flat(_arrays(s)) for s in range(4)])
    params = np.stack([_flat(_arrays(s + 10)) for s in range(4)])
    prev = _flat(_arrays(20))
    full = stats.block_sums(layout, grads, params, prev)
    for rows in ([0, 2], [3], []):
        some = stats.block_sums(layout, grads, params, prev, np.array(rows, np.int64))
        for name in ("grad_sq", "grad_abs", "grad_nonfinite", "slice_abs"):
            np.testing.assert_array_equal(some[name], full[name])
        for name in ("grad_zero", "param_sq", "update_sq"):
            np.testing.assert_allclose(some[name][rows], full[name][rows], rtol=1e-6)
            others = np.setdiff1d(np.arange(4), rows)
            assert not some[name][others].any()


def test_empty_block_gives_empty_sums_and_empty_windows():
    """A block of no rows (an epoch end with nothing new) reduces to empty arrays."""
    layout = stats.Layout(["a", "b", "c"], SHAPES, {"cols": ("c", (1, 3))})
    empty = np.zeros([0, layout.size], np.float32)
    sums = stats.block_sums(layout, empty, empty, np.zeros(layout.size, np.float32))
    assert sums["grad_sq"].shape == (0, 3) and sums["slice_abs"].shape == (0, 1)
    m = stats.window_moments(
        empty,
        np.zeros([0]),
        [0],
        np.zeros(layout.size, np.float32),
        sums["grad_abs"],
        sums["slice_abs"],
        np.zeros([0]),
    )
    out = stats.window_statistics(layout, m)
    assert out["window_steps"].tolist() == [0.0]
    assert out["slice_grad_variance"].tolist() == [[0.0]]


def test_windows_of_a_block_match_numpy_over_steps():
    """Two windows of one block: variance, mean |g|, noise scale, slices as numpy."""
    layout = stats.Layout(["a", "b", "c"], SHAPES, {"cols": ("c", (1, 3))})
    steps = np.stack([_flat(_arrays(s)) + 3.0 for s in range(7)]).astype(np.float32)
    weights = np.ones(7, np.float32)
    weights[5] = 0.0  # a skipped step: no sample
    steps[5] = np.nan
    batch = np.array([32, 32, 32, 16, 16, 0, 16], np.float32)
    with np.errstate(invalid="ignore"):
        sums = stats.block_sums(layout, steps, steps, steps[0])
    m = stats.window_moments(
        steps,
        weights,
        [0, 3, 7],  # rows 0-2, rows 3-6, and an open window with no row yet
        steps[0],
        sums["grad_abs"],
        sums["slice_abs"],
        batch,
    )
    out = stats.window_statistics(layout, m)
    idx = layout.slices[0].flat_indices
    for w, rows, b in ((0, [0, 1, 2], 32.0), (1, [3, 4, 6], 16.0)):
        g = steps[rows].astype(np.float64)
        var = g.var(axis=0)
        per_var = [var[o:e].mean() for o, e in _bounds(layout)]
        np.testing.assert_allclose(out["layer_grad_variance"][w], per_var, rtol=1e-4)
        np.testing.assert_allclose(out["grad_variance"][w], var.mean(), rtol=1e-4)
        np.testing.assert_allclose(out["grad_mean_abs"][w], np.abs(g).mean(), 1e-5)
        np.testing.assert_allclose(
            out["noise_scale"][w], b * var.sum() / np.sum(g.mean(0) ** 2), rtol=1e-4
        )
        np.testing.assert_allclose(
            out["slice_grad_variance"][w], [var[idx].mean()], rtol=1e-4
        )
        np.testing.assert_allclose(
            out["slice_grad_mean_abs"][w], [np.abs(g[:, idx]).mean()], 1e-5
        )
        assert out["window_steps"][w] == 3
    assert out["window_steps"][2] == 0  # the open, empty window
    assert np.all(np.isfinite(out["grad_variance"]))


def test_flatten_densifies_indexed_slices():
    """A sparse (IndexedSlices) gradient is flattened as its dense equivalent."""
    sparse = tf.IndexedSlices(
        values=tf.constant([[1.0, 2.0]]), indices=tf.constant([2]), dense_shape=[3, 2]
    )
    flat = stats.flatten([sparse, tf.constant([7.0])]).numpy()
    np.testing.assert_array_equal(flat, [0, 0, 0, 0, 1, 2, 7])
