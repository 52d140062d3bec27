"""Tests of tb_gradplugin.window_stats: a window's figures from the step's sums."""

from __future__ import annotations

import numpy as np

from tb_gradplugin import stats, window_stats
from tests.test_stats import SHAPES, _arrays, _bounds, _flat


def test_window_statistics_from_sums_match_numpy_over_steps():
    """Variance, mean |g|, noise scale, SNR, zero share from sums equal numpy's."""
    layout = stats.Layout(["a", "b", "c"], SHAPES, {"cols": ("c", (1, 3))})
    rng = np.random.default_rng(0)
    steps = np.stack([_flat(_arrays(s)) + 0.5 for s in range(5)]).astype(np.float64)
    steps[:, :3] = 0.0  # never a gradient: counted as zero in the window
    steps[1:3, 3] = 0.0  # zero at some steps only: not counted
    batch = rng.integers(8, 33, 5)
    bounds = list(_bounds(layout))
    idx = layout.slices[0].flat_indices
    sums = window_stats.WindowSums.empty(layout)
    sums.add_rows(
        np.array([[np.sum(g[a:b] ** 2) for a, b in bounds] for g in steps]),
        np.array([[np.abs(g[a:b]).sum() for a, b in bounds] for g in steps]),
        np.array([[np.sum(g[idx] ** 2)] for g in steps]),
        np.array([[np.abs(g[idx]).sum()] for g in steps]),
        batch,
    )
    total = steps.sum(axis=0)
    out = window_stats.window_statistics(
        layout,
        sums,
        np.array([np.sum(total[a:b] ** 2) for a, b in bounds]),
        np.array([np.sum(total[a:b] == 0) for a, b in bounds]),
        np.array([np.sum(total[idx] ** 2)]),
    )
    var = steps.var(axis=0)
    mean = steps.mean(axis=0)
    np.testing.assert_allclose(
        out["layer_grad_variance"], [var[a:b].mean() for a, b in bounds], rtol=1e-9
    )
    np.testing.assert_allclose(out["grad_variance"], var.mean(), rtol=1e-9)
    np.testing.assert_allclose(out["grad_mean_abs"], np.abs(steps).mean(), 1e-9)
    np.testing.assert_allclose(
        out["layer_grad_mean_abs"], [np.abs(steps[:, a:b]).mean() for a, b in bounds]
    )
    # McCandlish et al. 2018, eq. 2.8: B_simple = B tr(Σ) / |G|².
    b_simple = batch.mean() * var.sum() / np.sum(mean**2)
    np.testing.assert_allclose(out["noise_scale"], b_simple, rtol=1e-9)
    np.testing.assert_allclose(out["grad_snr"], np.sum(mean**2) / var.sum(), 1e-9)
    np.testing.assert_allclose(out["slice_grad_variance"], [var[idx].mean()], 1e-9)
    np.testing.assert_allclose(
        out["slice_grad_mean_abs"], [np.abs(steps[:, idx]).mean()], rtol=1e-9
    )
    np.testing.assert_allclose(out["layer_zero_fraction"], [3 / 20, 0.0, 0.0])
    assert out["window_steps"] == 5


def test_window_of_no_step_is_all_zero():
    """A window that saw no step gives zeros, never NaN."""
    layout = stats.Layout(["a", "b", "c"], SHAPES, {"cols": ("c", (1, 3))})
    sums = window_stats.WindowSums.empty(layout)
    out = window_stats.window_statistics(
        layout, sums, np.zeros(3), np.zeros(3), np.zeros(1)
    )
    assert out["window_steps"] == 0
    assert all(np.all(np.asarray(v) == 0) for v in out.values())
