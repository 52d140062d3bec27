"""In-graph statistics against numpy."""

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


def test_variable_sums_match_numpy():
    """Per-variable sums of squares, |g|, zeros, NaN/Inf and updates match numpy."""
    g, before, after = _arrays(0), _arrays(1), _arrays(2)
    g[0][0, :2] = 0.0
    g[2][1, 1] = np.nan
    g[2][2, 2] = np.inf
    sums = {k: v.numpy() for k, v in stats.variable_sums(g, before, after).items()}
    finite = [np.where(np.isfinite(t), t, 0) for t in g]
    np.testing.assert_allclose(sums["grad_sq"][:2], [np.sum(t**2) for t in g[:2]], 1e-5)
    assert np.isnan(sums["grad_sq"][2])
    np.testing.assert_allclose(
        sums["grad_abs"][:2], [np.abs(t).sum() for t in finite[:2]], 1e-5
    )
    np.testing.assert_array_equal(sums["grad_zero"], [2, 0, 0])
    np.testing.assert_array_equal(sums["grad_nonfinite"], [0, 0, 2])
    np.testing.assert_allclose(sums["param_sq"], [np.sum(t**2) for t in after], 1e-5)
    np.testing.assert_allclose(
        sums["update_sq"],
        [np.sum((a - b) ** 2) for a, b in zip(after, before, strict=True)],
        1e-5,
    )


def test_window_statistics_match_numpy_over_steps():
    """Window variance, mean |g|, noise scale and slice figures equal numpy's."""
    layout = stats.Layout(["a", "b", "c"], SHAPES, {"cols": ("c", (1, 3))})
    steps = [np.concatenate([t.ravel() for t in _arrays(s)]) + 3.0 for s in range(6)]
    shift = steps[0]
    d = np.stack(steps) - shift
    abs_sum = sum(
        np.array([np.abs(g[o:e]).sum() for o, e in _bounds(layout)]) for g in steps
    )
    slice_abs = sum(np.abs(g[layout.slices[0].flat_indices]).sum() for g in steps)
    m = stats.WindowMoments(
        shift=tf.constant(shift, tf.float32),
        sum1=tf.constant(d.sum(0), tf.float32),
        sum2=tf.constant((d**2).sum(0), tf.float32),
        count=tf.constant(6.0),
        abs_sum=tf.constant(abs_sum, tf.float32),
        slice_abs_sum=tf.constant([slice_abs], tf.float32),
    )
    out = {
        k: v.numpy()
        for k, v in stats.window_statistics(layout, m, tf.constant(32.0)).items()
    }
    g = np.stack(steps).astype(np.float64)
    var = g.var(axis=0)
    per_var = [var[o:e].mean() for o, e in _bounds(layout)]
    np.testing.assert_allclose(out["layer_grad_variance"], per_var, rtol=1e-4)
    np.testing.assert_allclose(out["grad_variance"], var.mean(), rtol=1e-4)
    np.testing.assert_allclose(out["grad_mean_abs"], np.abs(g).mean(), rtol=1e-5)
    np.testing.assert_allclose(
        out["noise_scale"], 32.0 * var.sum() / np.sum(g.mean(0) ** 2), rtol=1e-4
    )
    idx = layout.slices[0].flat_indices
    np.testing.assert_allclose(out["slice_grad_variance"], [var[idx].mean()], rtol=1e-4)
    np.testing.assert_allclose(
        out["slice_grad_mean_abs"], [np.abs(g[:, idx]).mean()], 1e-5
    )
    empty = stats.empty_window_statistics(layout)
    assert {k: tuple(v.shape) for k, v in empty.items()} == {
        k: tuple(np.shape(v)) for k, v in out.items()
    }


def test_flatten_densifies_indexed_slices():
    """A sparse (IndexedSlices) gradient is flattened as its dense equivalent."""
    sparse = tf.IndexedSlices(
        values=tf.constant([[1.0, 2.0]]), indices=tf.constant([2]), dense_shape=[3, 2]
    )
    flat = stats.flatten([sparse, tf.constant([7.0])]).numpy()
    np.testing.assert_array_equal(flat, [0, 0, 0, 0, 1, 2, 7])
