"""Tests of tb_gradplugin.spectral_density on known spectra (no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from tb_gradplugin import spectral_density
from tests.test_spectrum import _slq


def test_density_integrates_to_one_and_histogram_sums_to_one():
    """The broadened density has unit mass on its grid; histogram shares sum to 1."""
    rng = np.random.default_rng(4)
    eig = np.concatenate([rng.normal(0, 0.01, 300), [3.0, 5.0]])
    sigma, grid, dens = spectral_density.density_of([eig], [np.full(302, 1 / 302)], 128)
    assert sigma == pytest.approx((eig.max() - eig.min()) / 128)
    assert grid.size == spectral_density.DEFAULT_DENSITY_POINTS
    assert grid[0] == pytest.approx(eig.min() - 5 * sigma)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-3)
    # An isolated eigenvalue is a Gaussian of mass 1/302 and height 1/(302 σ√2π).
    peak = dens[np.argmin(np.abs(grid - 5.0))]
    assert peak == pytest.approx(1 / (302 * sigma * np.sqrt(2 * np.pi)), rel=0.05)
    hist = spectral_density.histogram(eig, grid)
    assert hist.sum() == pytest.approx(1.0)
    assert hist[np.argmin(np.abs(grid - 3.0))] == pytest.approx(1 / 302)

    quad, _ = _slq(np.concatenate([rng.uniform(1, 3, 150), -rng.uniform(size=50)]))
    sigma, grid, dens = spectral_density.density_of(quad.nodes, quad.weights, 128)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-3)
    assert np.all(dens >= 0)


def test_unpack_density_picks_the_step_and_drops_an_all_nan_histogram():
    """Rows laid out as [σ, grid, density, histogram] come back by step."""
    grid = np.linspace(0.0, 1.0, 4)
    rows = np.array(
        [
            np.concatenate([[0.1], grid, [1, 2, 3, 4], [0.5, 0.5, 0, 0]]),
            np.concatenate([[0.2], grid + 1, [4, 3, 2, 1], np.full(4, np.nan)]),
        ]
    )
    content = {"points": 4, "method": "lanczos"}
    latest = spectral_density.unpack_density([5, 9], rows, content)
    assert (latest["step"], latest["steps"], latest["method"]) == (9, [5, 9], "lanczos")
    assert latest["broadening"] == 0.2 and latest["histogram"] is None
    np.testing.assert_array_equal(latest["grid"], grid + 1)
    np.testing.assert_array_equal(latest["density"], [4, 3, 2, 1])
    for step in (5, 8, 0):  # a step between or before logged ones: the one before
        first = spectral_density.unpack_density([5, 9], rows, content, step=step)
        assert first["step"] == 5 and first["broadening"] == 0.1
        np.testing.assert_array_equal(first["histogram"], [0.5, 0.5, 0, 0])
