"""Tests of tb_gradplugin.hessian_spectra: the exact and Lanczos paths per block."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tb_gradplugin import hessian_engine, hessian_spectra, spectrum  # noqa: E402
from tests.test_curvature import _small_regression  # noqa: E402


def _settings(max_exact_params):
    return hessian_spectra.Settings(
        max_exact_params=max_exact_params,
        lanczos_steps=64,
        lanczos_probes=4,
        hutchinson_samples=8,
        resolution=1e-3,
        density_points=64,
        reorthogonalize=True,
    )


def test_exact_groups_pack_small_variables_in_order_up_to_the_limit():
    """Groups keep the variables' order and hold at most `limit` parameters."""
    sizes = [5, 3, 4, 9, 2, 2]
    groups = hessian_spectra.exact_groups(sizes, [0, 1, 2, 4, 5], 8)
    assert groups == [(0, 1), (2, 4, 5)]
    assert hessian_spectra.exact_groups([20, 1], [0, 1], 8) == [(0,), (1,)]


def test_layer_spectra_solve_small_blocks_exactly_and_large_ones_by_lanczos():
    """Small blocks equal the exact spectrum of the full Hessian's block."""
    model, x, y = _small_regression()
    engine = hessian_engine.engine_for(model)
    assert engine.sizes == [18, 6, 12, 2]
    x_t, y_t = hessian_engine.to_tensors(x), hessian_engine.to_tensors(y)
    _, _, h = engine.hessian((0, 1, 2, 3), x_t, y_t, None, 32)
    h = h.numpy()
    layer, hvps = hessian_spectra.layer_spectra(
        engine, x_t, y_t, None, 32, np.random.default_rng(0), _settings(15)
    )
    assert [s.method for s in layer] == ["lanczos", "exact", "exact", "exact"]
    offsets = engine.offsets
    for i in (1, 2, 3):
        a, b = offsets[i], offsets[i + 1]
        want = spectrum.exact_spectrum(np.linalg.eigvalsh(h[a:b, a:b]))
        assert layer[i].min_ratio == pytest.approx(want.min_ratio)
        assert layer[i].top == pytest.approx(want.top, rel=1e-5)
    # Groups (1,) and (2, 3) exactly, then Lanczos on the 18 (capped at 18 steps).
    assert hvps == 6 + 12 + 2 + 4 * 18
    eig = np.linalg.eigvalsh(h[:18, :18])
    assert layer[0].top == pytest.approx(eig.max(), rel=1e-4)
    assert layer[0].min_ratio_low <= np.mean(eig > 0) <= layer[0].min_ratio_high
